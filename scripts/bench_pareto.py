"""Pruning methods x budgets on one trained supernet: a table and Pareto plots.

Trains the dense supernet once (or reuses RUN_DIR/train), then for every method and
budget runs search (the method) -> extract -> finetune -> fuse -> export (float ONNX),
with the same epochs for every method: methods that prune in one shot (uniform, l1,
l1-layer, lasso, torch-pruning) fine-tune for search.epochs + finetune.epochs, so every
subnet has the same number of training epochs after the dense net. All fused nets are
then timed in one process (onnxruntime, alternating rounds). Writes RUN_DIR/pareto.json,
docs/pareto_<name>.md and docs/pareto_<name>_{macs,latency,widths}.png.

    python scripts/bench_pareto.py --config configs/fmnist.yaml --name fmnist \\
        --budgets 0.75,0.5,0.25 --set data.train_subset=10000 --set train.epochs=3 ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from repas import stages
from repas.atomic import atomic_write_json, atomic_write_text
from repas.config import load_config
from repas.deploy import cpu_name, onnx_latency_each
from repas.search import list_methods, method_class


def run_one(cfg, run: Path, method: str, budget: float, data) -> dict:
    out = run / f"{method}-{budget:g}"
    search = dataclasses.replace(cfg.search, method=method, target=budget, target_abs=None)
    # a method that does not train gets the search epochs as extra fine-tuning: equal total epochs
    epochs = cfg.finetune.epochs + (0 if method_class(method).trains else cfg.search.epochs)
    sub = dataclasses.replace(cfg, run_dir=str(out), search=search,
                              finetune=dataclasses.replace(cfg.finetune, epochs=epochs))
    started = time.perf_counter()
    stages.search_stage(sub, source=run / "train", data=data)
    stages.extract_stage(sub)
    stages.finetune_stage(sub, data=data)
    stages.fuse_stage(sub)
    stages.export_stage(sub, data=data, formats=["onnx"], int8=False)
    export = json.loads((out / "export" / "report.json").read_text())
    return {"method": method, "budget": budget, "dir": str(out), "widths": export["widths"],
            "macs": export["macs"], "params": export["params"], "metric": export["onnx_metrics"],
            "seconds": time.perf_counter() - started}


def plot(rows: list[dict], primary: str, name: str, docs: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for x_key, label in (("macs", "MACs (M)"), ("latency_ms", "latency (ms, onnxruntime, 1 thread)")):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for m in methods:
            pts = sorted((r[x_key] / (1e6 if x_key == "macs" else 1), r["metric"][primary]) for r in rows
                         if r["method"] == m)
            ax.plot(*zip(*pts), marker="o" if m == "pas" else ".", lw=2.2 if m == "pas" else 1, label=m)
        paths.append(_finish(plt, fig, ax, label, primary, f"{name}: {primary} against {x_key.split('_')[0]}",
                             docs / f"pareto_{name}_{x_key.split('_')[0]}.png"))
    budgets = sorted({r["budget"] for r in rows}, reverse=True)
    mid = budgets[len(budgets) // 2]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in rows:
        if r["budget"] == mid:
            ax.plot(range(len(r["widths"])), r["widths"], marker=".", label=r["method"])
    paths.append(_finish(plt, fig, ax, "layer", "width", f"{name}: widths found at {mid:g} x dense",
                         docs / f"pareto_{name}_widths.png"))
    return paths


def _finish(plt, fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(rows: list[dict], primary: str) -> str:
    budgets = sorted({r["budget"] for r in rows}, reverse=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["budget"]): r for r in rows}
    head = "| method | " + " | ".join(f"{b:g} x dense MACs: {primary} / MACs / ms" for b in budgets) + " |"
    lines = [head, "|---" * (len(budgets) + 1) + "|"]
    for m in methods:
        cells = []
        for b in budgets:
            r = cell.get((m, b))
            best = max(x["metric"][primary] for x in rows if x["budget"] == b)
            value = f"{r['metric'][primary]:.2f}" if r else "-"
            if r and r["metric"][primary] == best:
                value = f"**{value}**"
            cells.append(f"{value} / {r['macs'] / 1e6:.2f}M / {r['latency_ms']:.3f}" if r else "-")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--name", required=True, help="names the docs files: docs/pareto_<name>*")
    p.add_argument("--methods", default=",".join(list_methods()))
    p.add_argument("--budgets", default="0.75,0.5,0.25", help="fractions of the dense MACs")
    p.add_argument("--run-dir", help="default: runs/pareto-<name>")
    p.add_argument("--set", action="append", default=[], help="config override, as in repas --set")
    p.add_argument("--docs", default="docs")
    args = p.parse_args()
    run = Path(args.run_dir or f"runs/pareto-{args.name}")
    cfg = load_config(args.config, [*args.set, f"run_dir={run}"])
    data = stages.get_data(cfg)
    if not (run / "train" / "weights.safetensors").exists():
        stages.train_stage(cfg, data=data)
    results_path = run / "pareto.json"
    done = json.loads(results_path.read_text())["rows"] if results_path.exists() else []
    rows = list(done)
    for budget in (float(b) for b in args.budgets.split(",")):
        for method in args.methods.split(","):
            if any(r["method"] == method and r["budget"] == budget for r in rows):
                continue  # rerunning the script resumes where it stopped
            rows.append(run_one(cfg, run, method, budget, data))
            atomic_write_json(results_path, {"rows": rows})
    e = cfg.export
    shape = tuple(json.loads((Path(rows[0]["dir"]) / "export" / "report.json").read_text())["latency_input"])
    default_methods = ",".join(list_methods())
    times = onnx_latency_each({r["dir"]: Path(r["dir"]) / "export" / "model.onnx" for r in rows}, shape,
                              threads=e.threads, warmup=e.warmup, runs=e.runs)
    for r in rows:
        r["latency_ms"] = times[r["dir"]]
    primary = next(iter(rows[0]["metric"]))
    header = (f"{time.strftime('%Y-%m-%d')}, {cpu_name()}, torch threads {cfg.threads}; latency: onnxruntime, "
              f"batch 1 at {'x'.join(map(str, shape[2:]))}, {e.threads} thread, lowest of 5 sessions' medians. "
              f"Epochs: dense {cfg.train.epochs}, then {cfg.search.epochs} search + {cfg.finetune.epochs} "
              f"fine-tune for every method (one-shot methods: all {cfg.search.epochs + cfg.finetune.epochs} "
              f"fine-tune).\n\nCommand: `python scripts/bench_pareto.py --config {args.config} --name {args.name} "
              f"--budgets {args.budgets} " + (f"--methods {args.methods} " if args.methods != default_methods else "")
              + " ".join(f"--set {s}" for s in args.set) + "`\n")
    docs = Path(args.docs)
    plots = plot(rows, primary, args.name, docs)
    text = header + "\n" + table(rows, primary) + "\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    atomic_write_json(results_path, {"rows": rows, "header": header})
    atomic_write_text(docs / f"pareto_{args.name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
