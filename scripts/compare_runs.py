"""Compare searched nets of several run directories at their measured latency.

Reads each run's export (fused ONNX, test metric) and extract reports (a run without an
extract stage, e.g. a dense net trained from scratch, shows as not searched), times every
model.onnx in one process (each alone, in alternating rounds: ``onnx_latency_each``), and
prints a markdown table with the latency each run's table predicts.

    python scripts/compare_runs.py runs/lat_macs runs/lat_fmnist --table runs/lat_fmnist/latency.csv
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from repas.deploy import cpu_name, onnx_latency_each
from repas.search import LatencyModel
from repas.spec import ArchSpec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (with extract/ and export/)")
    p.add_argument("--table", help="latency table for the predicted column")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs-per-model", type=int, default=500)
    p.add_argument("--warmup", type=int, default=20)
    args = p.parse_args()
    reports = {r: json.loads((Path(r) / "export" / "report.json").read_text()) for r in args.runs}
    # a run without an extract stage (a dense net trained from scratch) was searched for nothing
    extracts = {r: json.loads((Path(r) / "extract" / "report.json").read_text())
                for r in args.runs if (Path(r) / "extract" / "report.json").exists()}
    shape = tuple(next(iter(reports.values()))["latency_input"])
    measured = onnx_latency_each({r: Path(r) / "export" / "model.onnx" for r in args.runs}, shape, threads=args.threads,
                                 warmup=args.warmup, runs=args.runs_per_model)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {cpu_name()}, onnxruntime, batch 1 at "
          f"{'x'.join(map(str, shape[2:]))}, {args.threads} thread; latency: lowest of 5 sessions' medians\n")
    print("| run | searched for | widths | MACs | predicted latency | measured latency | metric |")
    print("|---|---|---|---|---|---|---|")
    for r in args.runs:
        spec = ArchSpec.load(Path(r) / "export")
        pred = f"{float(LatencyModel.load(args.table, spec)(spec.widths)):.4f} ms" if args.table else "-"
        e = extracts.get(r)
        if e is None:
            searched = "- (not searched)"
        else:
            value = e.get("target_value", e["target"])  # a --targets subnet keeps its label in "target"
            searched = e["metric"] + " " + (f"{value:.4g} ms" if e["metric"] == "latency"
                                            else f"{value / 1e6:.3f} M MACs")
        metric = ", ".join(f"{k} {v:.2f}" for k, v in reports[r]["onnx_metrics"].items() if k in ("top1", "psnr"))
        print(f"| {r} | {searched} | {' / '.join(map(str, spec.widths))} | "
              f"{reports[r]['macs'] / 1e6:.3f} M | {pred} | {measured[r]:.4f} ms | {metric} |")


if __name__ == "__main__":
    main()
