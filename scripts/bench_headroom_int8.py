"""Headroom in width x precision space: is there a net to find that beats uniform widths in
int8 at the same measured .pte latency? (issue 32, item 1: the oracle before any search)

1. **Pool** (seed 0's trained dense net of ``--config``, RUN_ROOT/seed-0/train, trained if
   missing): uniform width multiples, "tail-wide" allocations (the wide late layers kept
   whole, where int8 is most efficient, the early ones thinned), "head-wide" ones (the
   reverse), and ``--random`` random allocations, each in int8 and in int8 with the first
   layer float (the 1 -> 16 layer is slower in int8). Every pool net is exported to an int8
   .pte (random weights: speed does not depend on them) and timed with the dense float .pte,
   interleaved in one process.
2. **Candidates**: the widest pool net of each family and precision whose measured latency is
   at most ``--budget`` x the dense float .pte, plus the widest random ones, ``--candidates``
   in all.
3. **Oracle**: each candidate is cut from the dense net (each layer keeps its highest filter-L1
   channels), fine-tuned ``--epochs`` (the config's recipe), fused, trained one epoch of QAT
   with its float layers kept float (``export.float_layers``), and scored as its int8 .pte in
   ExecuTorch's runtime on the 10k test images; ``--replicates`` times (data order seeds 0, 1,
   ...), so that the differences between candidates can be set against the noise of training
   one of them again.

With ``--searched``, one more candidate: the exact allocation of widths and per-layer
precision (``repas.search.exact_allocation``) that keeps the most filter-L1 importance under
the float and int8 ExecuTorch latency tables of the spec (``--tables``; profiled when
missing), at the largest table target whose .pte, timed interleaved with the dense float
one, meets the budget: the search, judged by the same oracle. ``--labels`` limits the runs
to candidates whose label starts with one of them (e.g. a third replicate of two).

Reported: every candidate's runs and latency; a one-way ANOVA over the candidates; the rank
correlation between the first run and the mean of the others; and the winner's curse: the
candidate best in the first run, scored by the other runs only, against uniform int8 scored
the same way. With ``--float``, the float net to beat at that latency too (the widest uniform
net whose float .pte, timed interleaved with the dense one, meets the budget; its fine-tune
one epoch longer in place of QAT), outside the ANOVA: issue 31's accuracy at equal latency
in this benchmark's recipe. Rows are written to OUT.json atomically as they finish (resumable).

    OMP_WAIT_POLICY=PASSIVE python scripts/bench_headroom_int8.py --budget 0.25 --replicates 2
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle OpenMP threads sleep

import argparse
import dataclasses
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_equal_latency import ensure_dense, log, time_ptes  # noqa: E402
from bench_harness import RowStore, command  # noqa: E402
from bench_int8 import pte_top1  # noqa: E402
from bench_proxy import finetune_cut  # noqa: E402
from headroom_table import table  # noqa: E402

from repas.atomic import atomic_write_text  # noqa: E402
from repas.config import load_config  # noqa: E402
from repas.deploy import cpu_name, export_models  # noqa: E402
from repas.deploy.executorch_export import executorch_version, set_executorch_threads  # noqa: E402
from repas.search import LatencyModel, create_method  # noqa: E402
from repas.search.allocation import full_scores, layer_normalized  # noqa: E402
from repas.search.cost import cost as spec_cost  # noqa: E402
from repas.search.exact_allocation import chain_cost, exact_allocation, score_values  # noqa: E402
from repas.search.methods.magnitude import l1_scores  # noqa: E402
from repas.spec import ArchSpec  # noqa: E402
from repas.stages.qat import qat_int8  # noqa: E402
from repas.supernet import build, fuse_repnet, fused_spec, load_model  # noqa: E402
from repas.task_data import make_task_data  # noqa: E402

STEP = 4  # widths are multiples of 4, as extract.round_to


def rounded(full: int, m: float) -> int:
    return max(STEP, min(full, int(round(full * m / STEP)) * STEP))


def pool(full: list[int], n_random: int, step: float = 0.05, seed: int = 0) -> dict[str, list[int]]:
    """Width allocations by family: uniform, tail-wide, head-wide, random."""
    half = len(full) // 2
    out: dict[str, list[int]] = {}
    for m in np.arange(0.15, 1.001, step):
        out[f"uniform {m:.2f}"] = [rounded(c, m) for c in full]
        out[f"tail-wide {m:.2f}"] = [rounded(c, m if i < half else 1.0) for i, c in enumerate(full)]
        out[f"tail-wide-0.75 {m:.2f}"] = [rounded(c, m if i < half else 0.75) for i, c in enumerate(full)]
        out[f"head-wide {m:.2f}"] = [rounded(c, 1.0 if i < half else m) for i, c in enumerate(full)]
    rng = random.Random(seed)
    for i in range(n_random):
        out[f"random {i}"] = [rounded(c, rng.uniform(0.15, 1.0)) for c in full]
    return out


def fused_at(spec: ArchSpec, widths: list[int]) -> torch.nn.Module:
    d = spec.to_dict()
    for lay, w in zip(d["layers"], widths):
        lay["out_channels"], lay["gated"], lay["identity_map"] = w, False, None
        lay["branches"] = [b for b in lay["branches"] if not b.startswith("identity")]
    return build(fused_spec(ArchSpec.from_dict(d))).eval()


def measure_pool(dense: torch.nn.Module, args: argparse.Namespace, doc: dict[str, Any]) -> None:
    """Phase 1: every pool net's int8 (and first-float) .pte, timed with the dense float .pte."""
    spec = dense.spec
    shape = (1, spec.in_channels, *spec.input_size)
    nets = pool(spec.widths, args.random, args.step)
    seen: dict[tuple, str] = {}
    first = "blocks.0.reparam_conv"
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        dense_fused = fuse_repnet(dense).eval()
        made = export_models(dense_fused, Path(tmp) / "dense", shape, ["pte"], calibration=None)
        paths["dense float"] = Path(tmp) / "dense" / made["files"]["pte"]["float"]
        for name, widths in nets.items():
            for prec, keep in (("int8", []), ("int8-first-float", [first])):
                key = (tuple(widths), prec)
                if key in seen:
                    continue
                seen[key] = f"{name} {prec}"
                where = Path(tmp) / f"n{len(paths)}"
                net = fused_at(spec, widths)
                made = export_models(net, where, shape, ["pte"], calibration=[torch.randn(32, *shape[1:])],
                                     float_layers=keep)
                paths[seen[key]] = where / made["files"]["pte"]["int8"]
        log(f"pool: timing {len(paths)} .pte files interleaved ({args.runs} calls each)")
        ms = time_ptes(paths, shape, args.runs)
    rows = []
    for (widths, prec), label in seen.items():
        family = label.split()[0]
        macs = float(spec_cost(spec, list(widths), "macs"))
        rows.append({"label": label, "family": family, "precision": prec, "widths": list(widths),
                     "ms": ms[label], "ratio": ms[label] / ms["dense float"], "macs": macs})
    doc["pool"] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "dense_float_ms": ms["dense float"], "rows": rows}


def given_widths(text: str) -> dict[str, list[int]]:
    """``--float-widths``: 'A/B/C,D/E/F' -> {'given A/B/C': [A, B, C], ...}."""
    return {f"given {w}": [int(v) for v in w.split("/")] for w in text.split(",") if w}


def measure_float_pool(dense: torch.nn.Module, args: argparse.Namespace, doc: dict[str, Any]) -> None:
    """``--float``: the uniform family's float .pte files (and ``--float-widths``), timed with
    the dense float .pte."""
    spec = dense.spec
    shape = (1, spec.in_channels, *spec.input_size)
    nets = {name: w for name, w in pool(spec.widths, 0, args.step).items() if name.startswith("uniform")}
    nets.update(given_widths(args.float_widths))
    with tempfile.TemporaryDirectory() as tmp:
        made = export_models(fuse_repnet(dense).eval(), Path(tmp) / "dense", shape, ["pte"], calibration=None)
        paths = {"dense float": Path(tmp) / "dense" / made["files"]["pte"]["float"]}
        for name, widths in nets.items():
            made = export_models(fused_at(spec, widths), Path(tmp) / f"n{len(paths)}", shape, ["pte"],
                                 calibration=None)
            paths[f"{name} float"] = Path(tmp) / f"n{len(paths)}" / made["files"]["pte"]["float"]
        log(f"float pool: timing {len(paths)} .pte files interleaved ({args.runs} calls each)")
        ms = time_ptes(paths, shape, args.runs)
    doc["float_pool"] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "dense_float_ms": ms["dense float"],
                         "rows": [{"label": f"{name} float", "family": name.split()[0], "precision": "float",
                                   "widths": widths, "ms": ms[f"{name} float"],
                                   "ratio": ms[f"{name} float"] / ms["dense float"]} for name, widths in nets.items()]}


def float_candidates(doc: dict[str, Any], budget: float) -> list[dict[str, Any]]:
    """The float nets to beat: the widest uniform net whose float .pte meets the budget, and
    each ``--float-widths`` net that meets it."""
    fits = [r for r in doc["float_pool"]["rows"] if r["ratio"] <= budget]
    return [max((r for r in fits if r["family"] == "uniform"), key=lambda r: sum(r["widths"])),
            *(r for r in fits if r["family"] == "given")]


def choose(doc: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Phase 2: the widest fitting pool net of each family and precision, then random ones."""
    fits = [r for r in doc["pool"]["rows"] if r["ratio"] <= args.budget]
    size = lambda r: sum(r["widths"])  # noqa: E731
    chosen: list[dict[str, Any]] = []
    for family in ("uniform", "tail-wide", "tail-wide-0.75", "head-wide"):
        for prec in ("int8", "int8-first-float"):
            group = [r for r in fits if r["family"] == family and r["precision"] == prec]
            if group:
                best = max(group, key=size)
                if all(best["widths"] != c["widths"] or best["precision"] != c["precision"] for c in chosen):
                    chosen.append(best)
    randoms = sorted((r for r in fits if r["family"] == "random"), key=size, reverse=True)
    for r in randoms:
        if len(chosen) >= args.candidates:
            break
        chosen.append(r)
    return chosen[:max(args.candidates, 2)]


def latency_tables(spec: ArchSpec, args: argparse.Namespace) -> LatencyModel:
    """The float and int8 ExecuTorch tables of ``spec`` (``--tables``; measured when missing)."""
    from repas.deploy.profile import profile
    from repas.latency_table import LatencyTable

    paths = [Path(p) for p in args.tables.split(",")]
    for path, backend in zip(paths, ("executorch", "executorch-int8")):
        if not path.is_file():
            log(f"profiling {backend} -> {path} (minutes)")
            profile(spec, backend, divisor=8, threads=1).save(path)
    return LatencyModel(LatencyTable.load(paths[0]), spec, str(paths[0]), int8_table=LatencyTable.load(paths[1]),
                        int8_source=str(paths[1]))


def searched(dense: torch.nn.Module, scores: list[torch.Tensor], args: argparse.Namespace) -> dict[str, Any]:
    """The exact allocation (widths x precision) under the tables at the largest table target
    whose int8 .pte, timed with the dense float one, meets the budget."""
    spec = dense.spec
    model = latency_tables(spec, args)
    chain = chain_cost(spec, model)
    values = score_values(layer_normalized(full_scores(spec, scores)), threshold=0.0)
    dense_table = float(model.at(spec.widths, ["float"] * len(spec.widths)))
    shape = (1, spec.in_channels, *spec.input_size)
    found: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        made = export_models(fuse_repnet(dense).eval(), Path(tmp) / "dense", shape, ["pte"], calibration=None)
        paths = {"dense float": Path(tmp) / "dense" / made["files"]["pte"]["float"]}
        for t in np.arange(args.budget * 0.7, args.budget * 1.6, args.budget * 0.05):
            widths, precision = exact_allocation(spec, values, chain, t * dense_table, step=STEP)
            keep = [f"blocks.{i}.reparam_conv" for i, p in enumerate(precision) if p == "float"]
            key = f"{'/'.join(map(str, widths))} {','.join(keep)}"
            if key in {c["key"] for c in found.values()}:
                continue
            where = Path(tmp) / f"s{len(found)}"
            made = export_models(fused_at(spec, widths), where, shape, ["pte"],
                                 calibration=[torch.randn(32, *shape[1:])], float_layers=keep)
            name = f"t{t:.3f}"
            paths[name] = where / made["files"]["pte"]["int8"]
            found[name] = {"key": key, "widths": widths, "float_layers": keep, "table_target": float(t),
                           "predicted_ratio": float(model.at(widths, precision)) / dense_table}
        log(f"searched: timing {len(found)} exact allocations interleaved with the dense float .pte")
        ms = time_ptes(paths, shape, args.runs)
    for name, f in found.items():
        f["ratio"] = ms[name] / ms["dense float"]
    fits = [f for f in found.values() if f["ratio"] <= args.budget]
    best = max(fits, key=lambda f: f["table_target"]) if fits else min(found.values(), key=lambda f: f["ratio"])
    first = "float" if "blocks.0.reparam_conv" in best["float_layers"] else "int8"
    return {"label": f"searched (exact, table {best['table_target']:.3f})", "family": "searched",
            "precision": f"mixed ({len(best['float_layers'])} float)" if best["float_layers"] else "int8",
            "widths": best["widths"], "float_layers": best["float_layers"], "ratio": best["ratio"],
            "predicted_ratio": best["predicted_ratio"], "first_layer": first,
            "tried": [{k: v for k, v in f.items() if k != "key"} for f in found.values()]}


def run_candidate(cand: dict[str, Any], rep: int, ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Phase 3: cut, fine-tune (data order seeded by ``rep``), fuse, QAT, int8 .pte top-1; a
    float candidate fine-tunes one epoch longer instead of QAT (equal epochs), float .pte top-1."""
    cfg, data, dense = ctx["cfg"], ctx["data"], ctx["dense"]
    keep = cand.get("float_layers") or (["blocks.0.reparam_conv"] if cand["precision"] == "int8-first-float" else [])
    is_float = cand["precision"] == "float"
    tcfg = dataclasses.replace(cfg.finetune, epochs=args.epochs + is_float)
    started = time.perf_counter()
    seed = f"-dense{args.dense_seed}" if args.dense_seed else ""
    out = Path(args.run_root) / "headroom" / f"b{args.budget:g}{seed}" / f"{cand['label'].replace(' ', '_')}-r{rep}"
    net, curve = finetune_cut(dense, ctx["scores"], cand["widths"], tcfg, data, out, seed=rep)
    fused = fuse_repnet(net.eval()).eval()
    shape = (1, fused.spec.in_channels, *fused.spec.input_size)
    if is_float:
        return {"label": cand["label"], "precision": "float", "widths": cand["widths"], "rep": rep,
                "ratio": cand["ratio"], "top1": pte_top1(fused, data, fused.spec, shape, out / "model.pte"),
                "seconds": time.perf_counter() - started, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    qcfg = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, qat=True, float_layers=keep or None))
    torch.manual_seed(rep)
    int8, _, qat = qat_int8(qcfg, fused, data, fused.spec)
    top1 = pte_top1(int8, data, fused.spec, shape, out / "model-int8.pte")
    return {"label": cand["label"], "precision": cand["precision"], "widths": cand["widths"], "rep": rep,
            "ratio": cand["ratio"], "top1": top1, "float_top1_before_qat": curve[-1] if curve else None,
            "qat_seconds": qat["seconds"], "seconds": time.perf_counter() - started,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/fmnist.yaml")
    p.add_argument("--run-root", default="runs/int8", help="the dense net is RUN_ROOT/seed-0/train")
    p.add_argument("--budget", type=float, default=0.25, help="latency budget, x the dense float .pte")
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--replicates", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4, help="fine-tune epochs of each candidate (then 1 of QAT)")
    p.add_argument("--random", type=int, default=40, help="random allocations in the pool")
    p.add_argument("--runs", type=int, default=300, help="timed calls per .pte")
    p.add_argument("--step", type=float, default=0.05, help="width multiple step of the pool's families")
    p.add_argument("--out", default="", help="OUT.json / OUT.md (default docs/headroom_int8_fmnist_bBUDGET)")
    p.add_argument("--set", action="append", default=[], help="config override, as repas --set")
    p.add_argument("--searched", action="store_true", help="add the exact allocation under the tables")
    p.add_argument("--tables", default="runs/int8/latency-executorch.csv,runs/int8/latency-executorch-int8.csv",
                   help="FLOAT,INT8 latency tables of the spec (measured there when missing)")
    p.add_argument("--labels", default="", help="comma-separated label prefixes: run only those candidates")
    p.add_argument("--dense-seed", type=int, default=0,
                   help="the dense net: RUN_ROOT/seed-S/train (trained if missing)")
    p.add_argument("--float", action="store_true", help="add the float net to beat: the widest uniform net whose "
                   "float .pte meets the budget (its fine-tune one epoch longer, in place of QAT)")
    p.add_argument("--float-widths", default="", help="with --float: more float nets to beat, e.g. 8/8/12/20/16/20 "
                   "(comma-separated; each kept if its float .pte meets the budget)")
    p.add_argument("--pool-from", default="", help="another dense seed's OUT.json: its pool and searched candidate "
                   "(.pte speed does not depend on the weights), instead of timing them again")
    args = p.parse_args()
    if not 0 < args.budget <= 1 or args.replicates < (1 if args.pool_from else 2):
        p.error("--budget must lie in (0, 1] and --replicates be at least 2 (the noise is the point; 1 with "
                "--pool-from: another dense seed is the replicate)")
    seed = f"_dense{args.dense_seed}" if args.dense_seed else ""
    out = Path(args.out or f"docs/headroom_int8_fmnist_b{args.budget:g}{seed}")
    torch.set_num_threads(1)
    set_executorch_threads(1)
    path, md = out.parent / f"{out.name}.json", out.parent / f"{out.name}.md"  # (a name like b0.25 has a dot)
    store = RowStore(path)
    doc = store.doc
    earlier = doc.get("meta", {})
    runs = [c for c in earlier.get("commands", [earlier["command"]] if "command" in earlier else []) if c != command()]
    doc["meta"] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu_name(), "torch": torch.__version__,
                   "executorch": executorch_version(), "budget": args.budget, "epochs": args.epochs,
                   "command": command(), "commands": [*runs, command()]}  # every run that added rows here
    args.seeds, args.threads = "0", 1  # what ensure_dense reads
    dense = load_model(ensure_dense(args.dense_seed, args)).eval()
    if args.pool_from and "pool" not in doc:
        source = json.loads(Path(args.pool_from).read_text())
        doc["pool"] = source["pool"]
        if "searched" in source:
            doc["searched"] = source["searched"]
    if "pool" not in doc:
        measure_pool(dense, args, doc)
        store.save()
    scores = l1_scores(create_method("l1-layer", dense, target=0.5))  # eagleeye's channel ranking
    doc["candidates"] = choose(doc, args)
    if args.searched:
        if "searched" not in doc:
            doc["searched"] = searched(dense, scores, args)
        doc["candidates"].append(doc["searched"])
    if args.float:
        given = {f"{name} float" for name in given_widths(args.float_widths)}
        timed = lambda d: bool(d.get("float_pool")) and given <= {r["label"] for r in d["float_pool"]["rows"]}  # noqa: E731
        if not timed(doc) and args.pool_from:  # .pte speed does not depend on the weights
            source = json.loads(Path(args.pool_from).read_text())
            if timed(source):
                doc["float_pool"] = source["float_pool"]
        if not timed(doc):
            measure_float_pool(dense, args, doc)
        doc["candidates"] += float_candidates(doc, args.budget)
    store.save()
    log("candidates: " + "; ".join(f"{c['label']} {'/'.join(map(str, c['widths']))} {c['ratio']:.3f}"
                                   for c in doc["candidates"]))
    cfg = load_config(args.config, overrides=list(args.set), values={"threads": 1, "seed": 0})
    ctx = {"cfg": cfg, "data": make_task_data(cfg), "dense": dense, "scores": scores}
    wanted = [w for w in args.labels.split(",") if w]
    for cand in doc["candidates"]:  # candidate by candidate: a stop leaves whole candidates, noise included
        if wanted and not any(cand["label"].startswith(w) for w in wanted):
            continue
        for rep in range(args.replicates):
            if any(r["label"] == cand["label"] and r["rep"] == rep for r in doc["rows"]):
                continue
            row = store.add(run_candidate(cand, rep, ctx, args))
            atomic_write_text(md, table(doc, args.budget))
            log(f"{cand['label']} run {rep}: {row['precision']} .pte top-1 {row['top1']:.2f} ({row['seconds']:.0f} s)")
    atomic_write_text(md, table(doc, args.budget))
    print(table(doc, args.budget))


if __name__ == "__main__":
    main()
