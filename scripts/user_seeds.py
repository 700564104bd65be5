"""Collect the seeds of a pipeline (``repas pipeline`` with ``model.builder``, or on a repas
supernet, one run directory per seed) into docs/<name>.json and a markdown table: each method's metric (mean ±
std over the seeds), MACs, cost / target and ONNX latency, beside the dense net and (denoising)
the noisy input.

    for S in 0 1 2; do repas pipeline --config configs/unet_denoise.yaml --set seed=$S \\
        --run-dir runs/unet_denoise/seed$S; done
    python scripts/user_seeds.py runs/unet_denoise/seed* --name unet_denoise_seeds \\
        --command "repas pipeline --config configs/unet_denoise.yaml --set seed=S --run-dir runs/unet_denoise/seedS"
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_harness import RowStore, cell  # noqa: E402


def rows_of(run: Path) -> list[dict]:
    if not (run / "report.json").exists() and (run / "summary.json").exists():
        return supernet_rows_of(run)
    summary = json.loads((run / "report.json").read_text())
    key = summary.get("primary", "top1")
    cfg = json.loads((run / "config.json").read_text())
    seed, first = cfg["seed"], cfg["search"]["method"]
    out = []
    for method, r in summary["methods"].items():
        export = json.loads((run / ("" if method == first else f"compare-{method}") / "export" / "report.json")
                            .read_text())
        out.append({"seed": seed, "method": method, "widths": r["widths"], "macs": r["macs"],
                    "cost_vs_target": r["cost_vs_target"], "metric": key, "torch": r["finetune"]["test"],
                    "onnx": export["onnx_metrics"], "latency_ms": export["latency"]["median_ms"],
                    "dense": summary["dense"].get("test"), "dense_macs": r["dense_macs"],
                    "baseline": summary.get("baseline"), "finetune_epochs": r["finetune"]["epochs"]})
    return out


def supernet_rows_of(run: Path) -> list[dict]:
    """The same rows from a repas supernet's pipeline (``summary.json``: the searched net and
    each ``search.compare`` method, all from one dense net)."""
    summary = json.loads((run / "summary.json").read_text())
    seed, key = json.loads((run / "config.json").read_text())["seed"], summary["metric"]
    nets = {summary["method"]: summary["searched"], **summary.get("compared", {})}
    out = []
    for method, r in nets.items():
        onnx = r["metrics"]["onnx float"]
        # each net's own cost in the budget's metric (summary's cost_vs_target is the searched net's)
        cost = {"macs": r["macs"], "params": r["params"], "latency": r.get("predicted_ms")}.get(summary["cost_metric"])
        if cost is None:
            raise SystemExit(f"{run}: {method} has no {summary['cost_metric']} cost in summary.json to set against "
                             "the target")
        out.append({"seed": seed, "method": method, "widths": r["widths"], "macs": r["macs"],
                    "cost_vs_target": cost / summary["target"], "metric": key, "torch": {key: r["torch"]}, "onnx": onnx,
                    "latency_ms": r["onnx_ms"], "dense": summary["dense"]["metrics"]["onnx float"],
                    "dense_macs": summary["dense"]["macs"], "baseline": None, "finetune_epochs": r["epochs"]})
    return out


def table(rows: list[dict]) -> str:
    key = rows[0]["metric"]
    extra = [k for k in rows[0]["onnx"] if k != key][:1]  # e.g. ssim beside psnr
    head = f"| method | {key} (ONNX, mean ± std, n) |" + "".join(f" {k} |" for k in extra)
    lines = [head + " MACs (seed 0) | cost / target | ONNX latency (ms) | widths (seed 0) |",
             "|---|---|" + "---|" * len(extra) + "---|---|---|---|"]
    seeds = sorted({r["seed"] for r in rows})
    first_method = [r for r in rows if r["method"] == rows[0]["method"]]
    dense = [r["dense"][key] for r in first_method if r["dense"]]
    if dense:
        lines.append(f"| dense | {cell(dense, count=True)} |" + "".join(
            f" {cell([r['dense'][k] for r in first_method], 4, count=True)} |" for k in extra)
            + f" {rows[0]['dense_macs'] / 1e6:.2f} M | 1 x dense | | |")
    base = [r["baseline"][key] for r in first_method if r["baseline"]]
    if base:
        lines.append(f"| noisy input | {cell(base, count=True)} |" + "".join(
            f" {cell([r['baseline'][k] for r in first_method], 4, count=True)} |" for k in extra)
            + " | | | |")
    for method in dict.fromkeys(r["method"] for r in rows):
        got = [r for r in rows if r["method"] == method]
        first = next(r for r in got if r["seed"] == min(r["seed"] for r in got))
        lines.append(f"| {method} | {cell([r['onnx'][key] for r in got], count=True)} |"
                     + "".join(f" {cell([r['onnx'][k] for r in got], 4, count=True)} |" for k in extra)
                     + f" {first['macs'] / 1e6:.2f} M | {statistics.fmean(r['cost_vs_target'] for r in got):.3f} | "
                     f"{statistics.fmean(r['latency_ms'] for r in got):.3f} | {'/'.join(map(str, first['widths']))} |")
    return f"Seeds {', '.join(map(str, seeds))}.\n\n" + "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run directories, one per seed")
    p.add_argument("--name", required=True, help="names docs/<name>.json")
    p.add_argument("--command", default="", help="the command that made the runs, recorded beside them")
    p.add_argument("--docs", default="docs")
    args = p.parse_args()
    rows = [r for run in args.runs for r in rows_of(Path(run))]
    seeds = [r["seed"] for r in rows if r["method"] == rows[0]["method"]]
    if len(set(seeds)) != len(seeds):
        p.error(f"two of the runs have the same seed ({sorted(seeds)}): give one run directory per seed")
    store = RowStore(Path(args.docs) / f"{args.name}.json")
    store.doc.update(command=args.command, rows=rows)
    store.save()
    print(table(rows))


if __name__ == "__main__":
    main()
