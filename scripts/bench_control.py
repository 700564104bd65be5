"""Control experiment: the widths each method found, trained with one identical recipe.

A method's result mixes two things: the widths it allocates and the schedule that produced
them (how long the net trained at those widths, what it inherited). This script takes the
widths of every row of a bench_pareto run and trains each allocation twice with the same
recipe for every method: (a) from the same dense start (the seed's trained supernet, the
channels of each layer chosen by L1 norm of the equivalent kernels, then ``--epochs`` of
fine-tuning at the finetune recipe), and (b) from scratch (fresh initialisation,
``--scratch-epochs`` at the dense training recipe). Where the methods still differ, the
allocation differs in quality; where they converge, the schedule made the difference.
Rows are saved as they finish (RUN_DIR/control.json): a stopped run resumes.

    python scripts/bench_control.py --pareto-dir runs/pareto-fmnist_seeds_medium --config configs/fmnist.yaml \\
        --name fmnist_control_medium --seeds 0 --epochs 4 --scratch-epochs 8 --set data.train_subset=15000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_harness import RowStore, cell, header, seeds_arg  # noqa: E402

from repas import stages  # noqa: E402
from repas.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from repas.config import load_config  # noqa: E402
from repas.search import extract_subnet, subnet_spec
from repas.search.allocation import top_k_mask
from repas.search.importance import l1_norms
from repas.supernet import build, load_model
from repas.train import Trainer


def train(model, cfg, tcfg, data, out: Path) -> float:
    task = data.task(tcfg, model.spec)
    trainer = Trainer(model, task, tcfg, out, progress=False)
    trainer.fit(data.train_loader(tcfg))
    return trainer.evaluate(data.eval_batches(tcfg), trainer.eval_model)[data.primary]


def main() -> None:
    from repas.cli.main import configure_logging

    configure_logging()  # the stages' progress lines, as the CLI prints them
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pareto-dir", required=True, help="a bench_pareto run directory (pareto.json, seed-S/train)")
    p.add_argument("--config", required=True)
    p.add_argument("--name", required=True, help="names docs/control_<name>.md and .json")
    seeds_arg(p, "0")
    p.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs from the dense start")
    p.add_argument("--scratch-epochs", type=int, default=8, help="training epochs from scratch")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--docs", default="docs")
    args = p.parse_args()
    root = Path(args.pareto_dir)
    rows = json.loads((root / "pareto.json").read_text())["rows"]
    store = RowStore(root / "control.json")
    done = store.rows
    seeds = args.seeds
    for seed in seeds:
        run = root / f"seed-{seed}"
        cfg = load_config(args.config, [*args.set, f"run_dir={run}", f"seed={seed}"])
        data = stages.get_data(cfg)
        dense = load_model(run / "train").eval()
        scores = l1_norms(dense)
        for r in (r for r in rows if r["seed"] == seed):
            key = (r["method"], r["budget_metric"], r["budget"], seed)
            if any((d["method"], d["budget_metric"], d["budget"], d["seed"]) == key for d in done):
                continue
            started = time.perf_counter()
            masks = [top_k_mask(s, w) for s, w in zip(scores, r["widths"])]
            torch.manual_seed(seed)
            inherited = extract_subnet(dense, masks)
            tuned = train(inherited, cfg, dataclasses.replace(cfg.finetune, epochs=args.epochs), data,
                          run / "control" / f"{r['method']}-{r['budget']:g}-dense")
            torch.manual_seed(seed)
            fresh = build(subnet_spec(dense.spec, masks))
            scratch = train(fresh, cfg, dataclasses.replace(cfg.train, epochs=args.scratch_epochs), data,
                            run / "control" / f"{r['method']}-{r['budget']:g}-scratch")
            store.add({"method": r["method"], "budget_metric": r["budget_metric"], "budget": r["budget"],
                       "seed": seed, "widths": r["widths"], "macs": r["macs"], "searched": r["metric"][data.primary],
                       "from_dense": tuned, "from_scratch": scratch, "seconds": time.perf_counter() - started})
            print(f"{r['method']} {r['budget']:g} seed {seed}: as searched {r['metric'][data.primary]:.2f}, "
                  f"same recipe from dense {tuned:.2f}, from scratch {scratch:.2f}", flush=True)
    methods = list(dict.fromkeys(d["method"] for d in done))
    budgets = sorted({(d["budget_metric"], d["budget"]) for d in done}, key=lambda b: (b[0], -b[1]))

    lines = [header(f"widths from `{root}/pareto.json`, seeds {','.join(map(str, seeds))}") + "\n\n"
             f"From dense: L1-chosen channels of the seed's dense supernet, {args.epochs} fine-tuning epochs "
             f"(finetune recipe). From scratch: fresh weights, {args.scratch_epochs} epochs (train recipe).\n",
             "| method | budget | widths (seed " + str(seeds[0]) + ") | as searched | same recipe from dense | "
             "from scratch |", "|---|---|---|---|---|---|"]
    for m in methods:
        for kind, b in budgets:
            got = [d for d in done if d["method"] == m and (d["budget_metric"], d["budget"]) == (kind, b)]
            if got:
                lines.append(f"| {m} | {b:g} x {kind} | {' / '.join(map(str, got[0]['widths']))} | "
                             f"{cell([d['searched'] for d in got])} | {cell([d['from_dense'] for d in got])} | "
                             f"{cell([d['from_scratch'] for d in got])} |")
    text = "\n".join(lines) + "\n"
    docs = Path(args.docs)
    atomic_write_text(docs / f"control_{args.name}.md", text)
    atomic_write_json(docs / f"control_{args.name}.json", {"rows": done})
    print(text)


if __name__ == "__main__":
    main()
