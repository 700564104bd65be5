"""How well the latency model predicts whole nets: predicted vs measured batch-1 latency of
random subnets of a classification and an SR space.

For each space: N random subnets (widths at multiples of the divisor; the first two are
the dense net and the smallest one) are exported exactly as the pipeline does, and timed
in the same rounds as the latency table's micro-models (``repas profile``'s code); the
table then predicts each net. Prints each net and the mean absolute percentage error.

    python scripts/bench_latency_model.py                    # both spaces, 20 nets each
    python scripts/bench_latency_model.py --backend torch    # PyTorch eager instead of onnxruntime
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from repas.atomic import atomic_write_json
from repas.deploy import cpu_name, export_onnx, onnx_session, time_calls
from repas.deploy.profile import assemble_table, make_timer, plan_profile, time_models
from repas.search import LatencyModel, subnet_spec
from repas.supernet import build, create_supernet_spec, fuse_repnet

PASSES = 5
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


def net_jobs(nets: list[torch.nn.Module], shape: tuple[int, ...], backend: str, out: Path, sr: bool, threads: int,
             warmup: int, runs: int) -> dict[str, Callable[[], float]]:
    """One timing round of each whole net, as the pipeline's export measures it: the fused
    net exported by torch.onnx (a new session a round), or the fused RepNet in eager mode."""
    x = torch.randn(*shape)
    if backend == "torch":
        def eager(n: torch.nn.Module) -> float:
            with torch.inference_mode():
                return time_calls(lambda: n(x), warmup, runs)["median_ms"]
        return {f"subnet{i}": (lambda n=n: eager(n)) for i, n in enumerate(nets)}
    check = (1, shape[1], 48, 40) if sr else shape
    feed = {"input": x.numpy()}

    def onnx(path: Path) -> float:
        session = onnx_session(path, threads)
        return time_calls(lambda: session.run(None, feed), warmup, runs)["median_ms"]
    paths = [export_onnx(n, check, out / f"net{i}.onnx", dynamic_hw=sr) for i, n in enumerate(nets)]
    return {f"subnet{i}": (lambda p=p: onnx(p)) for i, p in enumerate(paths)}


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
        widths = random_widths(spec, args.divisor, random.Random(args.seed), args.nets)
        nets = []
        for w in widths:
            masks = [torch.arange(lay.out_channels) < c for lay, c in zip(spec.layers, w)]
            nets.append(fuse_repnet(build(subnet_spec(spec, masks)).eval()))
        shape = (1, spec.in_channels, *spec.input_size)
        per_pass = max(1, runs // PASSES)
        jobs = net_jobs(nets, shape, args.backend, out / name, sr, args.threads, warmup, per_pass)
        # The table's rows and the whole nets are timed in the same rounds: this machine's
        # speed drifts by tens of percent within minutes (docs/results.md), and a table
        # measured before the nets would compare two different machines.
        started = time.perf_counter()
        timer, description = make_timer(args.backend, args.threads, warmup, per_pass)
        plan = plan_profile(spec, args.divisor)
        times = time_models(plan.models(), timer, passes=PASSES, extra=jobs)
        seconds = time.perf_counter() - started
        table = assemble_table(plan, times, {"backend": description, "device": cpu_name(),
                                             "threads": str(args.threads), "date": results["date"]})
        table.save(out / f"{name}-{args.backend}.csv")
        model = LatencyModel(table, spec)
        predicted = [float(model(w)) for w in widths]
        measured = [times[f"subnet{i}"] for i in range(len(nets))]
        errors = [abs(p_ - m) / m for p_, m in zip(predicted, measured)]
        print(f"## {name} at {'x'.join(map(str, spec.input_size))}: table of {len(table)} rows and {len(nets)} nets "
              f"in {seconds:.0f} s, "
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
