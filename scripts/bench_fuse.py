"""What fusion buys at inference: batch-1 CPU latency of multi-branch vs fused nets.

    python scripts/bench_fuse.py [--threads 1] [--runs 200] [--sr-size 360x640]

For the default classification net (repvgg-fmnist, with RepVGG, DBB and MobileOne-style
blocks) and the default super-resolution net (ECBSR-M4C16 shape, x2, ECB blocks), times
the multi-branch and the fused net in PyTorch eager and in onnxruntime, all interleaved
in one process (so machine noise falls on all alike), checks fused == multi-branch, and
prints medians and the speed-up ratios as a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from repas.deploy import export_onnx, onnx_session
from repas.search import spec_cost
from repas.spec import ArchSpec
from repas.supernet import build, create_supernet_spec, fuse_repnet, with_branches

BLOCKS = {
    "RepVGG": ["conv", "conv1x1", "identity"],
    "DBB": ["conv", "conv1x1", "conv1x1_kxk", "conv1x1_avg", "identity"],
    "MobileOne-style": ["conv_x4", "conv1x1", "identity"],
}


def ungated(spec: ArchSpec) -> ArchSpec:
    """The trained net a user deploys has no gates (extraction removes them)."""
    d = spec.to_dict()
    for lay in d["layers"]:
        lay["gated"] = False
    return ArchSpec.from_dict(d)


def nets() -> list[tuple[str, ArchSpec]]:
    fmnist = ungated(create_supernet_spec("repvgg-fmnist"))
    return [(f"repvgg-fmnist, {name} block", with_branches(fmnist, br)) for name, br in BLOCKS.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--sr-size", default="360x640", help="LR input HxW of the SR net")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.sr_size.split("x"))
    cases = nets() + [("ecbsr-m4c16 x2, ECB block, LR " + args.sr_size,
                       ungated(create_supernet_spec("ecbsr-m4c16", input_size=(h, w))))]
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), batch 1, median of interleaved runs\n")
    print("| net | MACs | PyTorch multi-branch | PyTorch fused | speed-up | ORT multi-branch | ORT fused | "
          "speed-up | max rel diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    tmp = Path(tempfile.mkdtemp())
    for name, spec in cases:
        runs = args.runs if spec.task == "classification" else max(10, args.runs // 20)
        med, rel = measure(spec, args.threads, runs, tmp)
        print(f"| {name} | {spec_cost(spec) / 1e6:.1f} M | {med['pt_multi']:.3f} ms | {med['pt_fused']:.3f} ms | "
              f"{med['pt_multi'] / med['pt_fused']:.2f}x | {med['ort_multi']:.3f} ms | {med['ort_fused']:.3f} ms | "
              f"{med['ort_multi'] / med['ort_fused']:.2f}x | {rel:.1e} |")


def measure(spec: ArchSpec, threads: int, runs: int, tmp: Path) -> tuple[dict[str, float], float]:
    """Median ms of the four variants, timed round-robin, and the fused net's relative error."""
    torch.manual_seed(0)
    multi = build(spec).eval()
    fused = fuse_repnet(multi)
    shape = (1, spec.in_channels, *spec.input_size)
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = multi(x)
        rel = float((fused(x) - ref).abs().max() / ref.abs().max())
    sessions = {kind: onnx_session(export_onnx(model, shape, tmp / f"{spec.name}-{kind}.onnx"), threads)
                for kind, model in (("multi", multi), ("fused", fused))}
    xn = x.numpy().astype(np.float32)
    calls = {
        "pt_multi": lambda: multi(x), "pt_fused": lambda: fused(x),
        "ort_multi": lambda: sessions["multi"].run(None, {"input": xn}),
        "ort_fused": lambda: sessions["fused"].run(None, {"input": xn}),
    }
    times: dict[str, list[float]] = {k: [] for k in calls}
    with torch.no_grad():
        for i in range(runs + 5):
            for k, fn in calls.items():
                t = time.perf_counter()
                fn()
                if i >= 5:  # warm-up rounds
                    times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}, rel

if __name__ == "__main__":
    main()
