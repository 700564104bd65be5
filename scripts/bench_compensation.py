"""CaP's claim, measured: does compensation (``cap``) replace fine-tuning? (issue 33)

From each seed's trained dense net (RUN_ROOT/seed-S/train, as ``bench_equal_latency`` and
``bench_headroom_int8`` train them), at each MACs budget: ``l1-layer`` (uniform widths by
filter L1, cut as is); the same with its BatchNorm statistics recalibrated on 512 training
images (the cheap fix a compensation must beat); and ``cap`` (the same widths, then the next
layers refit by least squares on 512 unlabeled training images). Each is scored on the 10k
test images as cut and after ``--epochs`` of the finetune recipe; the seconds each took to
prune (cap: its compensation) are reported beside. Resumable (OUT.json).

    OMP_WAIT_POLICY=PASSIVE python scripts/bench_compensation.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from pathlib import Path

import torch
from bench_harness import RowStore, cell, header, seeds_arg
from torch.optim.swa_utils import update_bn

from repas.atomic import atomic_write_text
from repas.config import load_config
from repas.search import create_method
from repas.stages.common import get_data
from repas.stages.methods import sample_inputs
from repas.supernet import load_model
from repas.train import Trainer

METHODS = ("l1-layer", "l1-layer+bn", "cap")  # l1-layer+bn: the cut net's BatchNorm recalibrated (as eagleeye)


def score(model, cfg, data, epochs: int, out: Path) -> float:
    tcfg = dataclasses.replace(cfg.finetune, epochs=max(epochs, 1), eval_every=0)
    trainer = Trainer(model, data.task(tcfg, model.spec), tcfg, out, progress=False)
    if epochs:
        trainer.fit(data.train_loader(tcfg))
    return trainer.evaluate(data.eval_batches(tcfg), trainer.eval_model)[data.primary]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/fmnist.yaml")
    p.add_argument("--run-root", default="runs/int8")
    seeds_arg(p)
    p.add_argument("--budgets", default="0.5,0.25", help="fractions of the dense MACs")
    p.add_argument("--epochs", type=int, default=1, help="fine-tune epochs after the cut")
    p.add_argument("--out", default="docs/compensation_fmnist")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    store = RowStore(out.with_suffix(".json"))
    store.doc["header"] = header(f"{args.threads} thread(s)")
    budgets = [float(b) for b in args.budgets.split(",")]
    for seed in args.seeds:
        cfg = load_config(args.config, values={"seed": seed, "threads": args.threads})
        data = get_data(cfg)
        dense = load_model(Path(args.run_root) / f"seed-{seed}" / "train").eval()
        for budget in budgets:
            for method in METHODS:
                if store.has(seed=seed, budget=budget, method=method):
                    continue
                torch.manual_seed(seed)
                model = copy.deepcopy(dense)
                m = create_method(method.removesuffix("+bn"), model, target=budget, step=cfg.extract.round_to,
                                  tolerance=cfg.extract.tolerance)
                inputs = sample_inputs(model, data, 512)
                started = time.perf_counter()
                net = m.extract(inputs if m.needs_inputs else None)
                if method.endswith("+bn"):
                    with torch.no_grad():
                        update_bn(list(inputs.split(256)), net)
                seconds = time.perf_counter() - started
                where = Path(args.run_root) / "compensation" / f"seed-{seed}-{method}-{budget:g}"
                cut = score(copy.deepcopy(net), cfg, data, 0, where / "cut")
                tuned = score(net, cfg, data, args.epochs, where / "tuned")
                store.add({"seed": seed, "budget": budget, "method": method, "widths": net.spec.widths,
                           "cut": cut, "tuned": tuned, "epochs": args.epochs, "seconds": seconds,
                           **m.metrics()})
                print(f"seed {seed} {budget:g} {method}: cut {cut:.2f}, after {args.epochs} epoch(s) {tuned:.2f} "
                      f"({seconds:.1f} s)", flush=True)
    lines = [store.doc["header"], "", "| MACs budget | method | top-1 as cut | top-1 after "
             f"{args.epochs} fine-tune epoch(s) | seconds to prune (cap: compensation) |", "|---|---|---|---|---|"]
    for budget in budgets:
        for method in METHODS:
            got = [r for r in store.rows if r["budget"] == budget and r["method"] == method]
            if got:
                lines.append(f"| {budget:g} x | {method} | {cell([r['cut'] for r in got], count=True)} | "
                             f"{cell([r['tuned'] for r in got], count=True)} | "
                             f"{cell([r['seconds'] for r in got], 1)} |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
