"""How well the latency model predicts whole nets: predicted vs measured batch-1 latency of
random subnets of a classification and an SR space.

For each space: measure a latency table (``repas profile``'s code), then for N random
subnets (widths at multiples of the divisor; the first two are the dense net and the
smallest one), export the fused net exactly as the pipeline does and time it. Prints each
net and the mean absolute percentage error (MAPE).

    python scripts/bench_latency_model.py                    # both spaces, 20 nets each
    python scripts/bench_latency_model.py --backend torch    # PyTorch eager instead of onnxruntime
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch

from repas.atomic import atomic_write_json
from repas.deploy import cpu_name, export_onnx, time_calls
from repas.deploy.latency import onnx_latency_each
from repas.deploy.profile import profile
from repas.search import LatencyModel, subnet_spec
from repas.supernet import build, create_supernet_spec, fuse_net

SPACES = {"repvgg-fmnist": {"in_channels": 1, "input_size": (28, 28), "num_classes": 10},
          "ecbsr-m4c32": {"in_channels": 1, "scale": 2}}


def random_widths(spec, divisor: int, rng: random.Random, n: int) -> list[list[int]]:  # noqa: ANN001
    dense = spec.widths
    smallest = [divisor if lay.gated else lay.out_channels for lay in spec.layers]
    nets = [dense, smallest]
    while len(nets) < n:
        nets.append([rng.choice(range(divisor, lay.out_channels + 1, divisor)) if lay.gated else lay.out_channels
                     for lay in spec.layers])
    return nets


def measure(nets: list[torch.nn.Module], shape: tuple[int, ...], backend: str, out: Path, sr: bool, threads: int,
            warmup: int, runs: int) -> list[float]:
    if backend == "torch":
        x = torch.randn(*shape)
        with torch.inference_mode():
            return [time_calls(lambda n=n: n(x), warmup, runs)["median_ms"] for n in nets]
    check = (1, shape[1], 48, 40) if sr else shape
    paths = {str(i): export_onnx(n, check, out / f"net{i}.onnx", dynamic_hw=sr) for i, n in enumerate(nets)}
    timed = onnx_latency_each(paths, shape, threads, warmup, runs)
    return [timed[str(i)] for i in range(len(nets))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spaces", nargs="+", default=list(SPACES), choices=list(SPACES))
    p.add_argument("--nets", type=int, default=20)
    p.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch"))
    p.add_argument("--divisor", type=int, default=4)
    p.add_argument("--sr-size", default="360x640", help="SR LR input size, HxW (the sr_x2 budget's size)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_latency")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": cpu_name(), "backend": args.backend,
               "threads": args.threads, "torch": torch.__version__, "spaces": {}}
    print(f"{results['date']}, {results['device']}, {args.backend}, {args.threads} thread, batch 1\n")
    for name in args.spaces:
        kw = dict(SPACES[name])
        if name.startswith("ecbsr"):
            kw["input_size"] = tuple(int(v) for v in args.sr_size.lower().split("x"))
        spec = create_supernet_spec(name, **kw)
        sr = spec.task == "super-resolution"
        # big SR layers take tens of ms each: fewer runs, still medians
        warmup, runs = (2, 10) if sr else (20, 200)
        started = time.perf_counter()
        table = profile(spec, args.backend, args.divisor, args.threads, warmup, runs)
        table.save(out / f"{name}-{args.backend}.csv")
        seconds = time.perf_counter() - started
        model = LatencyModel(table, spec)
        widths = random_widths(spec, args.divisor, random.Random(args.seed), args.nets)
        nets = []
        for w in widths:
            masks = [torch.arange(lay.out_channels) < c for lay, c in zip(spec.layers, w)]
            nets.append(fuse_net(build(subnet_spec(spec, masks)).eval()))
        predicted = [float(model(w)) for w in widths]
        shape = (1, spec.in_channels, *spec.input_size)
        measured = measure(nets, shape, args.backend, out / name, sr, args.threads, warmup, runs)
        errors = [abs(p_ - m) / m for p_, m in zip(predicted, measured)]
        print(f"## {name} at {'x'.join(map(str, spec.input_size))}: table of {len(table)} rows in {seconds:.0f} s, "
              f"overhead {table.overhead:.4f} ms\n")
        print("| widths | predicted (ms) | measured (ms) | error |\n|---|---|---|---|")
        for w, p_, m in zip(widths, predicted, measured):
            print(f"| {' / '.join(map(str, w))} | {p_:.4g} | {m:.4g} | {100 * (p_ - m) / m:+.1f}% |")
        mape = float(np.mean(errors))
        print(f"\n{name}: MAPE {100 * mape:.1f}% over {len(widths)} nets (max {100 * max(errors):.1f}%)\n")
        results["spaces"][name] = {"input_size": list(spec.input_size), "table_rows": len(table),
                                   "table_seconds": seconds, "overhead_ms": table.overhead, "mape": mape,
                                   "nets": [{"widths": w, "predicted_ms": p_, "measured_ms": m}
                                            for w, p_, m in zip(widths, predicted, measured)]}
    atomic_write_json(out / f"results-{args.backend}.json", results)


if __name__ == "__main__":
    main()
