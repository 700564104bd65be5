"""int8 against float in ExecuTorch (XNNPACK, 1 thread, batch 1): a fused net exported as
float and post-training int8 .pte (QAT's .pte has the same ops), and with ``--float-first``
also int8 with its first layer left float (mixed precision), all timed interleaved in one
process (``repas.deploy.latency_each``: the lowest of five sessions' medians).

The net is a trained model directory, or the dense net of a config at random weights
(``--config``: speed does not depend on the weights' values), exported at the shape the
pipeline exports it (the spec's input; SR at 360x640; a user model at its data's shape or
``export.tile``).

    python scripts/bench_int8_speed.py runs/int8/seed-0/train
    python scripts/bench_int8_speed.py --config configs/sr_x2.yaml --float-first --out docs/int8_speed.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle OpenMP threads sleep

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from repas.atomic import atomic_write_json
from repas.config import load_config
from repas.deploy import cpu_name, export_models, latency_each
from repas.deploy.executorch_export import executorch_version, set_executorch_threads
from repas.deploy.mixed_precision import quantizable_layers
from repas.deploy.runner import pte_runner
from repas.supernet import fuse, load_model

SR_SHAPE = (360, 640)  # the SR results' latency input (docs/results.md)


def config_net(path: str) -> tuple[nn.Module, tuple[int, ...], str]:
    """The config's dense net, fused, at random weights, and the shape it is exported at."""
    from repas.graph import fuse_user_model
    from repas.graph.builders import build_from
    from repas.supernet import build, create_supernet_spec, with_branches

    cfg = load_config(path)
    if cfg.model.builder:
        net = build_from(cfg.model.builder, cfg.model.kwargs or {}).eval()
        channels = 1 if cfg.data.name.startswith(("fashion", "denoise")) else 3
        size = tuple(cfg.export.tile) if cfg.export.tile else (28, 28)
        return fuse_user_model(net), (1, channels, *size), (cfg.model.kwargs or {}).get("model_name", cfg.model.builder)
    sr = cfg.model.space.startswith("ecbsr")
    spec = create_supernet_spec(cfg.model.space, **({"input_size": SR_SHAPE} if sr else
                                                     {"in_channels": 1, "input_size": (28, 28), "num_classes": 10}))
    if cfg.model.branches:
        spec = with_branches(spec, cfg.model.branches)
    model = build(spec).eval()
    return fuse(model).eval(), (1, spec.in_channels, *spec.input_size), spec.name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", help="a model directory (spec.json + weights.safetensors)")
    p.add_argument("--config", help="instead of a model: the dense net of this config, at random weights")
    p.add_argument("--shape", default=None, help="input N,C,H,W (default: as the pipeline exports it)")
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--float-first", action="store_true", help="also int8 with the first layer float")
    p.add_argument("--out", help="append the result to this JSON file")
    args = p.parse_args()
    if bool(args.model) == bool(args.config):
        p.error("give a model directory or --config, one of them")
    torch.set_num_threads(1)
    set_executorch_threads(1)
    if args.config:
        model, shape, name = config_net(args.config)
    else:
        model = fuse(load_model(args.model)).eval()
        shape, name = (1, model.spec.in_channels, *model.spec.input_size), args.model
    if args.shape:
        shape = tuple(int(v) for v in args.shape.split(","))
    calibration = [torch.randn(8, *shape[1:]) for _ in range(4)]
    with tempfile.TemporaryDirectory() as tmp:
        made = export_models(model, tmp, shape, ["pte"], calibration=calibration)
        paths = {k: Path(tmp) / n for k, n in made["files"]["pte"].items()}
        if args.float_first:
            first = quantizable_layers(model)[0]
            mixed = export_models(model, Path(tmp) / "mixed", shape, ["pte"], calibration=calibration,
                                  float_layers=[first])
            paths[f"int8, {first} float"] = Path(tmp) / "mixed" / mixed["files"]["pte"]["int8"]
        shipped = load_config(args.config).export.float_layers if args.config else None
        if shipped:  # the mixed precision the config ships
            mixed = export_models(model, Path(tmp) / "shipped", shape, ["pte"], calibration=calibration,
                                  float_layers=shipped)
            paths[f"int8, {', '.join(shipped)} float (the config's)"] = \
                Path(tmp) / "shipped" / mixed["files"]["pte"]["int8"]
        runs = args.runs if shape[2] * shape[3] < 100_000 else max(20, args.runs // 25)
        times = latency_each({k: (lambda q=q: pte_runner(q)) for k, q in paths.items()}, shape,
                             warmup=max(3, runs // 10), runs=runs, passes=5)
    row = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name(), "executorch": executorch_version(),
           "net": name, "source": args.config or args.model, "shape": list(shape), "ms": times,
           "speedup": {k: times["float"] / v for k, v in times.items() if k != "float"}}
    shown = ", ".join(f"{k} {v:.4f} ms" for k, v in times.items())
    ups = ", ".join(f"{k} {v:.2f}x" for k, v in row["speedup"].items())
    print(f"{row['date']}, {row['cpu']}, ExecuTorch {row['executorch']}, 1 thread, {name} at "
          f"{'x'.join(map(str, shape))}: {shown}; speed-up {ups}")
    if args.out:
        out = Path(args.out)
        doc = json.loads(out.read_text()) if out.exists() else {"rows": []}
        doc["rows"] = [r for r in doc["rows"] if r["source"] != row["source"]] + [row]
        atomic_write_json(out, doc)


if __name__ == "__main__":
    main()
