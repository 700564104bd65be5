"""Width rounding and latency: the same searched gates extracted at round-to 1, 4 and 8,
fused, and timed in onnxruntime beside the dense net, interleaved in one process.

    python scripts/bench_widths.py --run runs/fmnist [--threads 1 2] [--runs 2000]

MACs alone can mislead: odd widths run slower than SIMD-friendly ones (see DESIGN.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from repas.config import load_config
from repas.deploy import cpu_name, export_onnx, onnx_latency_interleaved
from repas.search import extract_subnet, fit_masks_to_budget, gate_masks, gate_scores, round_masks, spec_cost
from repas.stages.search import search_budget
from repas.supernet import fuse_repnet, load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a pipeline run directory (with train/ and search/)")
    ap.add_argument("--config", default="configs/fmnist.yaml")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=2000)
    args = ap.parse_args()
    cfg = load_config(args.config)
    run = Path(args.run)
    supernet = load_model(run / "search").eval()
    budget = search_budget(cfg, supernet)
    tmp = Path(tempfile.mkdtemp())
    spec = supernet.spec
    shape = (1, spec.in_channels, *spec.input_size)
    paths = {"dense": export_onnx(fuse_repnet(load_model(run / "train").eval()), shape, tmp / "dense.onnx")}
    facts = {"dense": (spec.widths, spec_cost(spec))}
    masks, scores = gate_masks(supernet), gate_scores(supernet)
    for r in (1, 4, 8):
        fitted = fit_masks_to_budget(spec, round_masks(masks, scores, r), scores, budget.target, metric=budget.metric,
                                     step=r, tolerance=cfg.extract.tolerance)
        net = fuse_repnet(extract_subnet(supernet, fitted))
        name = f"round-to {r}"
        paths[name] = export_onnx(net, shape, tmp / f"r{r}.onnx")
        facts[name] = (net.spec.widths, spec_cost(net.spec))
    print(f"{time.strftime('%Y-%m-%d')}, {cpu_name()}, onnxruntime CPU, batch 1, {args.runs} interleaved runs\n")
    print("| net | widths | MACs | " + " | ".join(f"{t} thread(s)" for t in args.threads) + " |")
    print("|---|---|---|" + "---|" * len(args.threads))
    results = {t: onnx_latency_interleaved(paths, shape, threads=t, warmup=100, runs=args.runs) for t in args.threads}
    for name, (widths, macs) in facts.items():
        cells = " | ".join(f"{results[t][name]['median_ms']:.4f} ms" for t in args.threads)
        print(f"| {name} | {'/'.join(map(str, widths))} | {macs / 1e6:.3f} M | {cells} |")


if __name__ == "__main__":
    main()
