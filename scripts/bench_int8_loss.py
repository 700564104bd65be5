"""The int8 loss of each config's shipped bundle, measured on the bundle's own files in their
runtimes (issue 31, acceptance 1).

For each config and seed, ``repas pipeline`` runs the config's recipe, shortened by the
``QUICK`` overrides below unless ``--full`` (2 cores cannot train 18 full recipes in a
session), with ``export.qat: true`` and ``export.formats: [onnx, pte]``. The export scores
every file of the bundle on the whole test split through the runner of ``repas predict``
(``model.json`` ``metrics``): the float and int8 .pte in ExecuTorch's runtime, the float and
int8 .onnx in onnxruntime. A row is int8 minus float per runtime. The .pte's int8 is the QAT
graph; the .onnx's int8 is onnxruntime's static quantization of the QAT-trained float weights
(onnxruntime has no QAT import of a PT2E graph).

Each run lives in RUN_ROOT/CONFIG/seed-S and resumes (``--resume auto``) after a stop; rows go
to OUT.json atomically as each run finishes, and OUT.md holds the table.

    OMP_WAIT_POLICY=PASSIVE python scripts/bench_int8_loss.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_harness import RowStore, cell, header, seed_list

from repas.atomic import atomic_write_text

CONFIGS = ("repvgg_timm_fmnist", "resnet18_fmnist", "sr_x2", "sr_x2_plain", "unet_denoise", "fmnist")
# Shortened recipes: the int8 step is the config's own; the nets train for fewer epochs.
QUICK = {
    "fmnist": ["train.epochs=3", "search.method=uniform", "search.compare=[]", "search.pte_latency=null",
               "search.precision=float", "search.epochs=1", "finetune.epochs=2"],
    "repvgg_timm_fmnist": ["train.epochs=2", "search.compare=[]", "search.epochs=1", "finetune.epochs=2"],
    "resnet18_fmnist": ["train.epochs=2", "search.method=uniform", "search.compare=[]", "search.epochs=1",
                        "finetune.epochs=2"],
    "sr_x2": ["train.epochs=3", "search.method=uniform", "search.epochs=1", "finetune.epochs=3"],
    "sr_x2_plain": ["train.minutes=4", "finetune.minutes=4"],
    "unet_denoise": ["train.epochs=4", "search.compare=[]", "search.epochs=1", "finetune.epochs=2"],
}
RUNTIMES = {"pte": "ExecuTorch (XNNPACK)", "onnx": "onnxruntime"}
BARS = {"top1": 0.1, "psnr": 0.05}  # the loss bars: top-1 points, dB


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_one(config: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    run = Path(args.run_root) / config / f"seed-{seed}"
    sets = [f"seed={seed}", f"threads={args.threads}", f"export.threads={args.threads}", "export.qat=true",
            "export.formats=[onnx,pte]", *([] if args.full else QUICK[config]), *args.set]
    cmd = [sys.executable, "-m", "repas", "pipeline", "--config", f"configs/{config}.yaml", "--run-dir", str(run),
           "--resume", "auto"] + [a for s in sets for a in ("--set", s)]
    log(f"{config} seed {seed}: {shlex.join(cmd)}")
    started = time.perf_counter()
    run.mkdir(parents=True, exist_ok=True)
    with open(run.parent / f"seed-{seed}.log", "a") as logfile:
        done = subprocess.run(cmd, stdout=logfile, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{config} seed {seed} failed (exit {done.returncode}): see {run.parent}/seed-{seed}.log")
    m = json.loads((run / "export" / "model.json").read_text())
    metric = "top1" if m["task"] == "classification" else "psnr"
    row: dict[str, Any] = {"config": config, "seed": seed, "metric": metric, "sets": sets,
                           "seconds": round(time.perf_counter() - started, 1), "qat": m["checks"].get("qat")}
    for fmt in ("pte", "onnx"):
        fl, i8 = m["metrics"].get(f"{fmt} float"), m["metrics"].get(f"{fmt} int8")
        if fl is None or i8 is None:
            continue
        row[fmt] = {"float": fl[metric], "int8": i8[metric], "delta": i8[metric] - fl[metric]}
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| config | metric | runtime | QAT | float (mean) | int8 - float (mean ± std, per seed) | worst | "
             "within the bar |", "|---|---|---|---|---|---|---|---|"]
    for config in dict.fromkeys(r["config"] for r in rows):
        mine = sorted((r for r in rows if r["config"] == config), key=lambda r: r["seed"])
        metric = mine[0]["metric"]
        digits = 2 if metric == "top1" else 3
        for fmt, runtime in RUNTIMES.items():
            got = [r[fmt] for r in mine if fmt in r]
            if not got:
                continue
            deltas = [g["delta"] for g in got]
            worst = min(deltas)
            ok = "yes" if worst >= -BARS[metric] else f"**no** (bar {BARS[metric]})"
            q = mine[0].get("qat") or {}
            qat = f"{q.get('optimizer', 'sgd')} {q.get('lr', 1e-3):g} x {q.get('epochs', 1):g} ep"
            lines.append(f"| {config} | {'top-1 %' if metric == 'top1' else 'PSNR dB'} | {runtime} | {qat} | "
                         f"{statistics.fmean(g['float'] for g in got):.{digits}f} | "
                         f"{cell(deltas, digits, each=True, sign=True)} | "
                         f"{worst:+.{digits}f} | {ok} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=",".join(CONFIGS[:-1]), help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--seeds", type=seed_list, default=seed_list("0,1,2"), help="comma-separated, each once")
    p.add_argument("--run-root", default="runs/int8loss")
    p.add_argument("--out", default="docs/int8_loss", help="writes OUT.json and OUT.md")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--full", action="store_true", help="the configs' own recipes, not the QUICK ones")
    p.add_argument("--set", action="append", default=[], help="extra override for every run, as repas --set")
    args = p.parse_args()
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown} (known: {', '.join(CONFIGS)})")
    out = Path(args.out)
    store = RowStore(out.with_suffix(".json"))
    store.doc["header"] = header("each run 1 thread")
    for seed in args.seeds:  # seed-major: a stop leaves every config with the same number of seeds
        for config in configs:
            if store.has(config=config, seed=seed):
                continue
            row = store.add(run_one(config, seed, args))
            atomic_write_text(out.with_suffix(".md"), f"{store.doc['header']}\n\n{table(store.rows)}\n")
            log(f"{config} seed {seed}: " + ", ".join(f"{f} {row[f]['delta']:+.3f}" for f in RUNTIMES if f in row))
    print(table(store.rows))


if __name__ == "__main__":
    main()
