"""int8 against float in ExecuTorch (XNNPACK, 1 thread, batch 1) for one trained model
directory: the fused net exported as float and post-training int8 .pte (QAT's .pte has the
same ops), both timed interleaved in one process (``repas.deploy.latency_each``: the lowest
of five sessions' medians).

    python scripts/bench_int8_speed.py runs/int8/seed-0/train --shape 1,1,28,28
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from repas.deploy import cpu_name, export_models, latency_each
from repas.deploy.executorch_export import executorch_version, set_executorch_threads
from repas.deploy.runner import pte_runner
from repas.supernet import fuse, load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a model directory (spec.json + weights.safetensors)")
    p.add_argument("--shape", default=None, help="input N,C,H,W (default: batch 1 at the spec's input size)")
    p.add_argument("--runs", type=int, default=500)
    args = p.parse_args()
    torch.set_num_threads(1)
    set_executorch_threads(1)
    model = fuse(load_model(args.model)).eval()
    spec = model.spec
    shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else (1, spec.in_channels, *spec.input_size)
    with tempfile.TemporaryDirectory() as tmp:
        made = export_models(model, tmp, shape, ["pte"], calibration=[torch.randn(64, *shape[1:])])
        runners = {k: (lambda path=Path(tmp) / name: pte_runner(path)) for k, name in made["files"]["pte"].items()}
        times = latency_each(runners, shape, warmup=50, runs=args.runs, passes=5)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {cpu_name()}, ExecuTorch {executorch_version()}, 1 thread, "
          f"{args.model} at {'x'.join(map(str, shape))}: float {times['float']:.4f} ms, int8 {times['int8']:.4f} ms, "
          f"speed-up {times['float'] / times['int8']:.2f}x")


if __name__ == "__main__":
    main()
