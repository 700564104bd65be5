"""Pruning methods x budgets x seeds on trained supernets: tables (mean and spread) and plots.

For every seed, trains the dense supernet once (or reuses RUN_DIR/seed-S/train), then for
every method and budget runs search (the method) -> extract -> finetune -> fuse -> export
(float ONNX), with the same total epochs for every method: methods that prune in one shot
(uniform, l1, l1-layer, lasso, torch-pruning) fine-tune for search.epochs + finetune.epochs.
Budgets are fractions of the dense MACs (``--budgets``) and of the dense net's latency as
the latency table predicts it (``--latency-budgets``; search.metric=latency for every
method, so uniform and L1 meet a latency budget too). All fused nets are then timed in one
process (onnxruntime, alternating rounds). Every finished row is saved at once to
RUN_DIR/pareto.json, so a stopped run resumes where it was; on a machine without RUN_DIR
the rows of the committed docs/pareto_<name>.json are kept (with the latency measured
then) and only the missing ones run. Writes docs/pareto_<name>.md,
docs/pareto_<name>.json (one row per method, budget and seed) and the plots.

    python scripts/bench_pareto.py --config configs/fmnist.yaml --name fmnist \\
        --methods taylor,pas,uniform,l1 --budgets 0.5,0.25 --latency-budgets 0.5,0.25 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_harness import RowStore, header, seeds_arg  # noqa: E402

from repas import stages  # noqa: E402
from repas.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from repas.config import PipelineConfig, load_config  # noqa: E402
from repas.deploy import onnx_latency_each  # noqa: E402
from repas.search import LatencyModel, list_methods, method_class, spec_cost  # noqa: E402
from repas.spec import ArchSpec  # noqa: E402


def final_width_epochs(cfg: PipelineConfig, method: str) -> float:
    """Epochs the final net trained at its own widths: the fine-tune, plus the part of the
    search it spent at its final widths (a one-shot method: all of it, as fine-tuning)."""
    cls = method_class(method)
    if not cls.trains:
        return cfg.search.epochs + cfg.finetune.epochs
    return cfg.finetune.epochs + cfg.search.epochs * (1 - getattr(cls, "prune_fraction", 1.0))


def run_one(cfg: PipelineConfig, run: Path, method: str, metric: str, budget: float, seed: int, data) -> dict:
    out = run / f"{method}-{metric}-{budget:g}"
    sub = stages.method_config(cfg, method, out, target=budget, target_abs=None, metric=metric)
    started = time.perf_counter()
    stages.method_run(sub, run / "train", data=data)  # equal total epochs: stages.finetune_config
    export = json.loads((out / "export" / "report.json").read_text())
    extract = json.loads((out / "extract" / "report.json").read_text())
    return {"method": method, "budget_metric": metric, "budget": budget, "seed": seed, "dir": str(out),
            "widths": export["widths"], "macs": export["macs"], "params": export["params"],
            "target": extract["target"], "cost": extract[f"predicted_{metric}"],
            "cost_vs_target": extract["cost_vs_target"], "metric": export["onnx_metrics"],
            "weight_density": extract.get("weight_density"),  # an unstructured method's non-zero weights
            "epochs_total": cfg.train.epochs + cfg.search.epochs + cfg.finetune.epochs,
            "epochs_at_own_widths": final_width_epochs(cfg, method), "seconds": time.perf_counter() - started}


def plot(rows: list[dict], primary: str, name: str, docs: Path) -> list[Path]:
    """Metric against MACs and against measured latency (means over the seeds, one line per
    method and kind of budget), and the widths each method found at the middle MACs budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    methods = list(dict.fromkeys(r["method"] for r in rows))
    kinds = list(dict.fromkeys(r["budget_metric"] for r in rows))
    for x_key, label in (("macs", "MACs (M)"), ("latency_ms", "latency (ms, onnxruntime, 1 thread)")):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for m in methods:
            for kind in kinds:
                groups: dict[float, list[dict]] = {}
                for r in rows:
                    if r["method"] == m and r["budget_metric"] == kind:
                        groups.setdefault(r["budget"], []).append(r)
                if not groups:
                    continue
                pts = sorted((statistics.fmean(r[x_key] for r in g) / (1e6 if x_key == "macs" else 1),
                              statistics.fmean(r["metric"][primary] for r in g)) for g in groups.values())
                ax.plot(*zip(*pts), marker="o" if kind == "macs" else "s", ls="-" if kind == "macs" else "--",
                        label=f"{m} ({kind} budget)")
        paths.append(_finish(plt, fig, ax, label, primary, f"{name}: {primary} against {x_key.split('_')[0]}",
                             docs / f"pareto_{name}_{x_key.split('_')[0]}.png"))
    macs_rows = [r for r in rows if r["budget_metric"] == kinds[0]]
    budgets = sorted({r["budget"] for r in macs_rows}, reverse=True)
    mid, seed = budgets[len(budgets) // 2], min(r["seed"] for r in rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in macs_rows:
        if r["budget"] == mid and r["seed"] == seed:
            ax.plot(range(len(r["widths"])), r["widths"], marker=".", label=r["method"])
    paths.append(_finish(plt, fig, ax, "layer", "width", f"{name}: widths found at {mid:g} x dense {kinds[0]} "
                         f"(seed {seed})", docs / f"pareto_{name}_widths.png"))
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


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(rows: list[dict], primary: str) -> str:
    """One row per method, one column per budget: mean +- std over the seeds of the metric,
    then the mean cost as its budget counts it (x target) and the measured latency."""
    budgets = sorted({(r["budget_metric"], r["budget"]) for r in rows}, key=lambda b: (b[0], -b[1]))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cells = {}
    for m in methods:
        for b in budgets:
            got = [r for r in rows if r["method"] == m and (r["budget_metric"], r["budget"]) == b]
            if got:
                cells[m, b] = (mean_std([r["metric"][primary] for r in got]), len(got),
                               statistics.fmean(r["cost_vs_target"] for r in got),
                               statistics.fmean(r["latency_ms"] for r in got))
    sparse: dict[str, list[float]] = {m: [] for m in methods}  # mean non-zero share, budget by budget
    for m in methods:
        for b in budgets:
            kept = [r["weight_density"] for r in rows if r["method"] == m and (r["budget_metric"], r["budget"]) == b
                    and r.get("weight_density") is not None]
            if kept:
                sparse[m].append(statistics.fmean(kept))
    head = "| method | " + " | ".join(f"{v:g} x dense {k}: {primary} (mean ± std, n) / cost x target / ms"
                                      for k, v in budgets) + " |"
    if any(sparse.values()):  # the unstructured methods: cost counts non-zero weights only, latency stays dense
        head += " non-zero conv weights (unstructured: no runtime here skips zeros) |"
    lines = [head, "|---" * (len(budgets) + 1 + bool(any(sparse.values()))) + "|"]
    for m in methods:
        row = []
        for b in budgets:
            if (m, b) not in cells:
                row.append("-")
                continue
            (mean, std), n, ratio, ms = cells[m, b]
            best = max(c[0][0] for (mm, bb), c in cells.items() if bb == b)
            value = f"{mean:.2f} ± {std:.2f} ({n})"
            row.append(f"{'**' + value + '**' if mean == best else value} / {ratio:.3f} / {ms:.3f}")
        if any(sparse.values()):
            row.append(" / ".join(f"{d:.0%}" for d in sparse[m]) or "all (structured)")
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def carried_rows(docs: Path, name: str) -> list[dict]:
    """The rows of an earlier run of this benchmark, from its committed docs JSON: a run
    resumed on a machine without RUN_DIR keeps them rather than training them again."""
    path = docs / f"pareto_{name}.json"
    if not path.exists():
        return []
    return [{**r, "carried": True} for r in json.loads(path.read_text())["rows"]]


def shared_latency_table(cfg: PipelineConfig, run: Path, data) -> Path:
    """The latency table of the space (measured once, shared by every seed)."""
    path = run / "latency.csv"
    if not path.exists():
        stages.profile_stage(dataclasses.replace(cfg, run_dir=str(run)), path, data=data)
    return path


def main() -> None:
    from repas.cli.main import configure_logging

    configure_logging()  # the stages' progress lines, as the CLI prints them
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--name", required=True, help="names the docs files: docs/pareto_<name>*")
    p.add_argument("--methods", default=",".join(list_methods()))
    p.add_argument("--budgets", default="0.5,0.25", help="fractions of the dense MACs ('' for none)")
    p.add_argument("--latency-budgets", default="", help="fractions of the dense net's latency, from the table")
    seeds_arg(p, "0")  # each seed trains its own dense supernet
    p.add_argument("--run-dir", help="default: runs/pareto-<name>")
    p.add_argument("--set", action="append", default=[], help="config override, as in repas --set")
    p.add_argument("--docs", default="docs")
    args = p.parse_args()
    root = Path(args.run_dir or f"runs/pareto-{args.name}")
    budgets = [("macs", float(b)) for b in args.budgets.split(",") if b.strip()]
    budgets += [("latency", float(b)) for b in args.latency_budgets.split(",") if b.strip()]
    results_path = root / "pareto.json"
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)  # the plots are written before the atomic text files
    store = RowStore(results_path)
    if not results_path.exists():
        store.rows.extend(carried_rows(docs, args.name))
    rows = store.rows
    table_path = None
    for seed in args.seeds:
        run = root / f"seed-{seed}"
        cfg = load_config(args.config, [*args.set, f"run_dir={run}", f"seed={seed}"])
        if table_path is None and any(k == "latency" for k, _ in budgets):
            table_path = shared_latency_table(cfg, root, stages.get_data(cfg))
        if table_path is not None:
            cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, latency_table=str(table_path)))
        data = None
        for metric, budget in budgets:
            for method in args.methods.split(","):
                if any((r["method"], r["budget_metric"], r["budget"], r["seed"]) == (method, metric, budget, seed)
                       for r in rows):
                    continue  # rerunning the script resumes where it stopped
                data = data or stages.get_data(cfg)
                if not (run / "train" / "weights.safetensors").exists():
                    stages.train_stage(cfg, data=data)
                store.add(run_one(cfg, run, method, metric, budget, seed, data))
    e = cfg.export
    here = [r for r in rows if (Path(r.get("dir", "")) / "export" / "model.onnx").exists()]
    if not here:
        raise SystemExit(f"no row of {args.name} has its run directory on this machine: nothing to time")
    shape = tuple(json.loads((Path(here[0]["dir"]) / "export" / "report.json").read_text())["latency_input"])
    times = onnx_latency_each({r["dir"]: Path(r["dir"]) / "export" / "model.onnx" for r in here}, shape,
                              threads=e.threads, warmup=e.warmup, runs=e.runs)
    for r in here:
        r["latency_ms"] = times[r["dir"]]
        r.pop("carried", None)
        if table_path is not None:
            spec = ArchSpec.load(Path(r["dir"]) / "export")
            r["predicted_latency_ms"] = float(LatencyModel.load(table_path, spec)(spec.widths))
    dense = ArchSpec.load(root / f"seed-{here[0]['seed']}" / "train")
    primary = next(iter(rows[0]["metric"]))
    top = (header(f"torch threads {cfg.threads}") + "\n\n"
           f"Latency: onnxruntime, batch 1 at {'x'.join(map(str, shape[2:]))}, {e.threads} thread, lowest of 5 "
           f"sessions' medians. Dense supernet: {spec_cost(dense):,.0f} MACs. Epochs: dense {cfg.train.epochs}, then "
           f"{cfg.search.epochs} search + {cfg.finetune.epochs} fine-tune for every method (one-shot methods: "
           f"all {cfg.search.epochs + cfg.finetune.epochs} fine-tune); the epochs each final net trained at its "
           f"own widths are in the JSON (epochs_at_own_widths). Seeds: {','.join(map(str, args.seeds))}; cells are "
           "mean ± sample std over the seeds (n = seeds run).\n")
    carried = sum(1 for r in rows if r.get("carried"))
    if carried:
        top += (f"\n{carried} rows were carried from an earlier run's docs JSON (their run directory was not "
                   f"on this machine): their latency is the one measured then, in another process.\n")
    plots = plot(rows, primary, args.name, docs)
    text = top + "\n" + table(rows, primary) + "\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    store.doc["header"] = top
    store.save()
    atomic_write_json(docs / f"pareto_{args.name}.json", {"header": top, "rows": [
        {k: r[k] for k in ("method", "budget_metric", "budget", "seed", "target", "cost", "cost_vs_target", "macs",
                           "params", "widths", "latency_ms", "metric", "epochs_total", "epochs_at_own_widths")
         if k in r} | {k: r[k] for k in ("predicted_latency_ms", "weight_density", "carried", "dir")
                       if r.get(k) is not None}
        for r in rows]})
    atomic_write_text(docs / f"pareto_{args.name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
