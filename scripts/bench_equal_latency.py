"""Accuracy at equal measured latency: the best float net against the int8 net (issue 31,
acceptance 3), on the phone runtime (ExecuTorch .pte, XNNPACK, 1 thread, batch 1).

1. **Latency calibration** (once): from seed 0's trained dense net, ``repas search`` +
   ``repas extract`` with ``uniform`` at a grid of MACs targets, each net fused and exported as
   float and int8 .pte, all timed interleaved in one process (``latency_each``). For each
   ``--fractions`` f of the reference's float .pte latency (the dense net's, or with
   ``--reference`` a fixed net of a space, e.g. ``ecbsr-m4c16``: issue 31 asks for SR at
   M4C16's), the float candidate is the largest grid net whose float .pte is at most f x the
   reference, the int8 candidate the largest whose int8 .pte is.
2. **Each candidate, each seed**, runs the real pipeline (``repas pipeline``) from that seed's
   dense net (copied, so ``--resume auto`` skips training) at its MACs target with equal
   epochs: the float net fine-tunes ``export.qat_epochs`` longer, the int8 net spends them
   on QAT (``--qat``). The score (top-1, or PSNR for SR) is the bundle's own .pte run in
   ExecuTorch's runtime on the whole test split.
3. **Timing**: every seed's bundles (the .pte files the pipeline shipped) and the reference
   float .pte, timed interleaved in one process; latency is a ratio to the reference.

Rows go to OUT.json atomically as they finish; a rerun skips what is done (resumable).

    OMP_WAIT_POLICY=PASSIVE python scripts/bench_equal_latency.py --seeds 0,1,2
    OMP_WAIT_POLICY=PASSIVE python scripts/bench_equal_latency.py --config configs/sr_x2.yaml \
        --reference ecbsr-m4c16 --fractions 1,0.5 --grid 0.6,0.5,0.4,0.33,0.26,0.2,0.15,0.12,0.1 \
        --runs 20 --run-root runs/int8-sr --out docs/equal_latency_sr_x2
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle OpenMP threads sleep

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_harness import cell  # noqa: E402

from repas.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from repas.config import load_config
from repas.deploy import cpu_name, export_models, latency_each
from repas.deploy.executorch_export import executorch_version, set_executorch_threads
from repas.deploy.runner import pte_runner
from repas.spec import ArchSpec
from repas.stages import extract_stage, search_stage
from repas.supernet import build, create_supernet_spec, fuse, load_model
from repas.supernet.spaces import list_spaces
from repas.task_data import task_data_class

GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.17, 0.14, 0.12, 0.1, 0.08, 0.06, 0.04)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def save(out: Path, doc: dict[str, Any]) -> None:
    atomic_write_json(out.with_suffix(".json"), doc)
    atomic_write_text(out.with_suffix(".md"), table(doc))
    if doc.get("timing"):
        front_png(doc, out.with_suffix(".png"))


def front_png(doc: dict[str, Any], path: Path) -> None:
    """The front a user chooses from: top-1 of each shipped .pte against its latency measured
    as a fraction of the dense float .pte (interleaved, per seed), mean ± std over the seeds
    that were timed; one line per precision."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timing = {t["seed"]: t["ratio"] for t in doc["timing"]}
    metric, ref = doc["meta"].get("metric", "top1"), reference_name(doc["meta"].get("reference"))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for prec, marker in (("float", "o"), ("int8", "s")):
        pts = []
        for f in sorted({r["fraction"] for r in doc["rows"] if r["precision"] == prec}):
            rs = [r for r in doc["rows"] if (r["fraction"], r["precision"]) == (f, prec) and r["seed"] in timing]
            if not rs:
                continue
            xs = [timing[r["seed"]][f"{f:g} {prec}"] for r in rs]
            ys = [r[metric] for r in rs]
            sd = statistics.stdev if len(rs) > 1 else (lambda v: 0.0)
            pts.append((statistics.fmean(xs), statistics.fmean(ys), sd(xs), sd(ys),
                        rs[0]["target"]))
        if not pts:
            continue
        x, y, dx, dy, targets = zip(*pts)
        ax.errorbar(x, y, xerr=dx, yerr=dy, marker=marker, capsize=3, label=f"{prec} .pte ({len(timing)} seeds)")
        for xi, yi, t in zip(x, y, targets):
            ax.annotate(f"{t:g}x MACs", (xi, yi), textcoords="offset points", xytext=(5, -12), fontsize=8)
    for f in sorted({r["fraction"] for r in doc["rows"]}):
        ax.axvline(f, color="grey", lw=0.6, ls=":")
    ax.set_xlabel(f"measured latency, x {ref}'s float .pte (ExecuTorch, XNNPACK, 1 thread)")
    ax.set_ylabel(f"{LABELS.get(metric, metric)} of the shipped .pte")
    ax.set_title(f"{doc['meta']['config']}: accuracy against measured latency")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


LABELS = {"top1": "top-1 %", "psnr": "PSNR (dB)"}


def reference_name(reference: str | None) -> str:
    return reference or "the dense net"


def pte_files(model: torch.nn.Module, where: Path, shape: tuple[int, ...]) -> dict[str, Path]:
    # these files are timed, never scored: a few random inputs set the int8 scales (64
    # full-size SR frames would be slow to calibrate for nothing)
    n = 64 if torch.Size(shape[1:]).numel() <= 10_000 else 4
    made = export_models(model, where, shape, ["pte"], calibration=[torch.randn(n, *shape[1:])])
    return {k: where / name for k, name in made["files"]["pte"].items()}


def time_ptes(paths: dict[str, Path], shape: tuple[int, ...], runs: int) -> dict[str, float]:
    return latency_each({k: (lambda p=p: pte_runner(p)) for k, p in paths.items()}, shape,
                        warmup=30, runs=runs, passes=5)


def calibrate(args: argparse.Namespace, doc: dict[str, Any]) -> None:
    """Phase 1: the MACs target of each (fraction, precision) candidate, by measured latency."""
    root = Path(args.run_root) / "calibration"
    dense_train = Path(args.run_root) / "seed-0" / "train"
    ensure_dense(0, args)
    nets: dict[str, torch.nn.Module] = {}
    for t in args.grid:
        run = root / f"t{t:g}"
        if not (run / "train").exists():
            shutil.copytree(dense_train, run / "train")
        cfg = config_for(args, 0, run, [f"search.target={t}", "search.target_abs=null", "search.compare=[]",
                                        "search.pte_latency=null", "search.method=uniform"])
        search_stage(cfg, resume="auto")
        nets[f"{t:g}"] = fuse(load_model(extract_stage(cfg))).eval()
        log(f"calibration: target {t:g}: widths {nets[f'{t:g}'].spec.widths}")
    spec = next(iter(nets.values())).spec
    shape = (1, spec.in_channels, *spec.input_size)
    paths: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for t, net in nets.items():
            for prec, p in pte_files(net, Path(tmp) / t, shape).items():
                paths[f"{t} {prec}"] = p
        paths.update(reference_pte(args, Path(tmp), spec))
        times = time_ptes(paths, shape, args.runs)
    dense = times["reference float"] if args.reference else times["1 float"]
    grid = [{"target": float(t), "widths": list(nets[t].spec.widths), "float_ms": times[f"{t} float"],
             "int8_ms": times[f"{t} int8"]} for t in nets]
    choice = {}
    for f in args.fractions:
        for prec in ("float", "int8"):
            fits = [g for g in grid if g[f"{prec}_ms"] <= f * dense]
            best = max(fits, key=lambda g: g["target"]) if fits else min(grid, key=lambda g: g[f"{prec}_ms"])
            choice[f"{f:g} {prec}"] = best["target"]
    doc["calibration"] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "dense_float_ms": dense, "grid": grid,
                          "choice": choice}
    log(f"calibration: {reference_name(args.reference)}'s float .pte {dense:.4f} ms; candidates {choice}")


def reference_pte(args: argparse.Namespace, where: Path, spec: ArchSpec) -> dict[str, Path]:
    """``--reference``'s fixed net, shaped as the config's net ``spec`` (its input, and its
    classes or SR scale), as a float .pte; random weights: it is timed, not scored."""
    if not args.reference:
        return {}
    task = create_supernet_spec(args.reference).task
    if task != spec.task:
        raise SystemExit(f"--reference {args.reference} is a {task} space and {args.config} a {spec.task} "
                         "config: give a reference of the same task")
    shape = {"in_channels": spec.in_channels, "input_size": spec.input_size}
    shape.update({"scale": spec.scale} if spec.task == "super-resolution" else {"num_classes": spec.num_classes})
    ref = create_supernet_spec(args.reference, **shape)
    torch.manual_seed(0)
    net = fuse(build(ref).eval()).eval()
    return {"reference float": pte_files(net, where / "reference", (1, spec.in_channels, *spec.input_size))["float"]}


def config_for(args: argparse.Namespace, seed: int, run: Path, overrides: list[str]) -> Any:  # noqa: ANN401
    return load_config(args.config, overrides=list(args.set) + overrides,
                       values={"run_dir": str(run), "seed": seed, "threads": 1})


def ensure_dense(seed: int, args: argparse.Namespace) -> Path:
    """The seed's dense net (``repas train`` with the config), trained once and reused."""
    run = Path(args.run_root) / f"seed-{seed}"
    given = Path(args.dense_from.format(seed=seed)) if args.dense_from else None
    if not (run / "train" / "report.json").exists() and given and (given / "report.json").exists():
        log(f"seed {seed}: the dense net of {given}")
        shutil.rmtree(run / "train", ignore_errors=True)
        shutil.copytree(given, run / "train")
    if not (run / "train" / "report.json").exists():
        log(f"seed {seed}: training the dense net in {run}/train")
        repas(["train", "--config", args.config, "--run-dir", str(run), "--seed", str(seed), "--threads", "1",
               "--resume", "auto", *sum((["--set", s] for s in args.set), [])])
    return run / "train"


def repas(argv: list[str]) -> None:
    cmd = [sys.executable, "-m", "repas", *argv]
    log("  $ " + " ".join(shlex.quote(a) for a in cmd[1:]))
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})


def run_candidate(seed: int, key: str, target: float, args: argparse.Namespace) -> dict[str, Any]:
    """Phase 2: the pipeline at ``target`` from the seed's dense net, equal epochs."""
    fraction, prec = key.split()
    run = Path(args.run_root) / f"seed-{seed}" / f"f{fraction}-{prec}"
    if not (run / "train").exists():
        shutil.copytree(ensure_dense(seed, args), run / "train")
    cfg = load_config(args.config, overrides=list(args.set))
    longer = cfg.finetune.epochs + round(cfg.export.qat_epochs)  # the float net trains QAT's epochs too
    extra = (["--qat", "--set", "export.int8=true"] if prec == "int8" else
             ["--set", "export.int8=false", "--set", f"finetune.epochs={longer}"])
    started = time.perf_counter()
    repas(["pipeline", "--config", args.config, "--run-dir", str(run), "--seed", str(seed), "--threads", "1",
           "--resume", "auto", "--target", f"{target:g}", "--set", "search.target_abs=null",
           "--set", "search.compare=[]",
           "--set", "export.formats=[onnx,pte]", "--set", "export.threads=1", "--set", "search.method=uniform",
           "--set", "search.pte_latency=null", "--set", "search.precision=float",  # the budget is set here
           *sum((["--set", s] for s in args.set), []), *extra])  # extra last: it overrides --set
    report = json.loads((run / "export" / "report.json").read_text())
    spec = json.loads((run / "export" / "model.json").read_text()) if (run / "export" / "model.json").exists() else {}
    ft = json.loads((run / "finetune" / "report.json").read_text())
    m = args.metric
    return {"seed": seed, "fraction": float(fraction), "precision": prec, "target": target,
            "widths": ft.get("widths"), "macs": ft.get("macs"), m: report["metrics"][f"pte {prec}"][m],
            f"{m}_float_pte": report["metrics"].get("pte float", {}).get(m),
            f"{m}_onnx": report["metrics"].get(f"onnx {prec}", {}).get(m),
            "pte": str(run / "export" / spec["files"]["pte"][prec]), "qat": spec.get("checks", {}).get("qat"),
            "seconds": time.perf_counter() - started, "model_json": bool(spec),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def time_seed(seed: int, rows: list[dict[str, Any]], doc: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Phase 3: the seed's shipped .pte files and the dense float .pte, in one process."""
    dense = fuse(load_model(ensure_dense(seed, args))).eval()
    shape = (1, dense.spec.in_channels, *dense.spec.input_size)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"dense float": pte_files(dense, Path(tmp), shape)["float"]}
        paths.update(reference_pte(args, Path(tmp), dense.spec))
        paths.update({f"{r['fraction']:g} {r['precision']}": Path(r["pte"]) for r in rows})
        times = time_ptes(paths, shape, args.runs)
    base = times["reference float"] if args.reference else times["dense float"]
    return {"seed": seed, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "ms": times,
            "ratio": {k: v / base for k, v in times.items()}}


def table(doc: dict[str, Any]) -> str:
    meta, cal = doc["meta"], doc.get("calibration", {})
    metric, ref = meta.get("metric", "top1"), reference_name(meta.get("reference"))
    label = LABELS.get(metric, metric)
    lines = ["# Accuracy at equal measured latency: float against int8 (`scripts/bench_equal_latency.py`)", "",
             f"Last run {meta['runs'][-1]['date']} on {meta['runs'][-1]['cpu']}, torch {meta['torch']}, "
             f"ExecuTorch {meta['executorch']}, 1 thread, batch 1. Command: `{meta['runs'][-1]['command']}`", "",
             f"Config `{meta['config']}`; every candidate is `uniform` widths from the seed's dense net, "
             "fine-tuned with equal epochs (float: QAT's epochs as more fine-tuning; int8: QAT). "
             f"The score ({label}) is the bundle's own .pte, run in ExecuTorch's runtime on the whole test split. "
             f"Latency budgets are fractions of {ref}'s float .pte.", ""]
    if cal:
        lines += [f"Calibration (seed 0's nets, interleaved): {ref}'s float .pte {cal['dense_float_ms']:.4f} ms.", "",
                  "| MACs target | widths | float ms | int8 ms | int8 speed-up |", "|---|---|---|---|---|"]
        for g in cal["grid"]:
            lines.append(f"| {g['target']:g} | {'/'.join(map(str, g['widths']))} | {g['float_ms']:.4f} | "
                         f"{g['int8_ms']:.4f} | {g['float_ms'] / g['int8_ms']:.2f}x |")
        lines.append("")
    lines += [f"| latency budget (x {ref}'s float .pte) | precision | MACs target | seeds | {label}, .pte | "
              "measured latency (x that, per seed) |", "|---|---|---|---|---|---|"]
    timing = {t["seed"]: t for t in doc.get("timing", [])}
    keys = sorted({(r["fraction"], r["precision"]) for r in doc["rows"]}, key=lambda k: (-k[0], k[1]))
    for f, prec in keys:
        rs = [r for r in doc["rows"] if (r["fraction"], r["precision"]) == (f, prec)]
        ratios = [timing[r["seed"]]["ratio"].get(f"{f:g} {prec}") for r in rs if r["seed"] in timing]
        shown = ", ".join(f"{x:.2f}" for x in ratios if x is not None) or "-"
        lines.append(f"| {f:g} | {prec} | {rs[0]['target']:g} | {len(rs)} | {cell([r[metric] for r in rs])} | "
                     f"{shown} |")
    lines += ["", "int8 minus float at each budget, per seed, then mean ± std:", ""]
    for f in sorted({k[0] for k in keys}, reverse=True):
        fl = {r["seed"]: r[metric] for r in doc["rows"] if r["fraction"] == f and r["precision"] == "float"}
        i8 = {r["seed"]: r[metric] for r in doc["rows"] if r["fraction"] == f and r["precision"] == "int8"}
        d = [i8[s] - fl[s] for s in sorted(fl) if s in i8]
        if d:
            digits, unit = (3, "dB") if metric == "psnr" else (2, "points")
            lines.append(f"- {f:g}x: {cell(d, digits, each=True, sign=True)} {unit}")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/fmnist.yaml")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--fractions", default="0.5,0.25",
                   help="latency budgets, fractions of the reference's float .pte")
    p.add_argument("--reference", default=None,
                   help="a fixed net of a space (e.g. ecbsr-m4c16) whose float .pte sets 1.0x (default: the dense net)")
    p.add_argument("--grid", default=",".join(f"{t:g}" for t in GRID),
                   help="MACs targets (fractions of the dense net) the calibration exports and times")
    p.add_argument("--run-root", default="runs/int8", help="seed S's dense net is RUN_ROOT/seed-S/train")
    p.add_argument("--dense-from", default=None,
                   help="a finished 'repas train' of the same config and seed to copy instead of training, "
                        "e.g. 'runs/sr_x2/seed{seed}/train'")
    p.add_argument("--out", default="docs/equal_latency_fmnist")
    p.add_argument("--runs", type=int, default=500, help="timed calls per model")
    p.add_argument("--set", action="append", default=[], help="config override, as repas --set")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    args.fractions = [float(f) for f in args.fractions.split(",")]
    args.grid = [float(t) for t in args.grid.split(",")]
    args.metric = task_data_class(load_config(args.config, overrides=list(args.set))).primary
    if args.reference and args.reference not in list_spaces():
        p.error(f"--reference {args.reference!r} is not a search space; one of {', '.join(list_spaces())}")
    torch.set_num_threads(1)
    set_executorch_threads(1)
    out = Path(args.out)
    doc = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {
        "meta": {}, "rows": [], "timing": []}
    if doc["meta"].get("reference", args.reference) != args.reference:
        raise SystemExit(f"{out}.json was measured against {reference_name(doc['meta'].get('reference'))}: "
                         "rerun with that --reference, or give another --out")
    doc["meta"].update(config=args.config, set=args.set, torch=torch.__version__, executorch=executorch_version(),
                       metric=args.metric, reference=args.reference)
    doc["meta"].setdefault("runs", []).append({
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu_name(),
        "command": "OMP_WAIT_POLICY=PASSIVE python " + " ".join(shlex.quote(a) for a in sys.argv)})
    if "calibration" not in doc:
        calibrate(args, doc)
        save(out, doc)
    for seed in seeds:
        for key, target in doc["calibration"]["choice"].items():
            if float(key.split()[0]) not in args.fractions:
                continue
            if any(r["seed"] == seed and f"{r['fraction']:g} {r['precision']}" == key for r in doc["rows"]):
                continue
            log(f"seed {seed}: {key} at MACs target {target:g}")
            row = run_candidate(seed, key, target, args)
            doc["rows"].append(row)
            save(out, doc)
            log(f"seed {seed}: {key}: .pte {args.metric} {row[args.metric]:.3f} ({row['seconds']:.0f} s)")
        rows = [r for r in doc["rows"] if r["seed"] == seed]
        if not any(t["seed"] == seed for t in doc["timing"]):
            doc["timing"].append(time_seed(seed, rows, doc, args))
            save(out, doc)
            log(f"seed {seed}: latency vs dense float {doc['timing'][-1]['ratio']}")
    log(f"done: {out}.md")


if __name__ == "__main__":
    main()
