"""How well the latency model predicts whole nets: predicted vs measured batch-1 latency of
random subnets of a classification and an SR space.

For each space: N random subnets (widths at multiples of the divisor; the first two are
the dense net and the smallest one) are exported exactly as the pipeline does, and timed
in the same rounds as the latency table's micro-models (``repas profile``'s code); the
table then predicts each net. Prints each net and the mean absolute percentage error.

    python scripts/bench_latency_model.py                    # both spaces, 20 nets each
    python scripts/bench_latency_model.py --backend torch    # PyTorch eager instead of onnxruntime
    python scripts/bench_latency_model.py --backend executorch-int8 --spaces repvgg-fmnist --divisor 8
    python scripts/bench_latency_model.py --backend executorch-mixed --spaces repvgg-fmnist --divisor 8

ExecuTorch (``executorch``, ``executorch-int8``): each net is exported as ``repas export``
writes it (``export_models(..., ["pte"])``: model.pte, and model-int8.pte by post-training
int8 of the same graph), the rows are ``repas profile --backend executorch[-int8]``'s
micro-models. ``executorch-mixed`` (classification): each net's layers and head are float
or int8 at random, exported as ``export.float_layers`` does (model-int8.pte with the float
layers kept float), and predicted from a float and an int8 table timed in the same rounds.
Lowering takes seconds per model, so the programs are kept under ``--out``
and every finished timing round is saved there: a rerun with the same arguments goes on
from the last finished round (delete ``times-*.json`` to measure afresh).
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
from repas.json_files import read_json
from repas.search import LatencyModel, subnet_spec
from repas.supernet import build, create_supernet_spec, fuse_repnet

PASSES = 5
PROBE = "1x1 depthwise + act"  # how boundaries are measured (in the saved rounds' key)
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
    if backend.startswith("executorch"):
        return pte_jobs(nets, shape, backend == "executorch-int8", out, warmup, runs)
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


def pte_jobs(nets: list[torch.nn.Module], shape: tuple[int, ...], int8: bool, out: Path, warmup: int,
             runs: int, float_layers: list[list[str]] | None = None) -> dict[str, Callable[[], float]]:
    """One timing round of each whole net as ``repas export`` writes it: the fused net
    lowered to model.pte, or post-training int8 (PT2E, XNNPACK quantizer, calibrated on a
    few random inputs: the timing does not depend on the values) to model-int8.pte. A new
    method is loaded from the file each round; files already written are reused."""
    from repas.deploy import export_models
    from repas.deploy.runner import load_pte

    name = "model-int8.pte" if int8 else "model.pte"
    paths = []
    for i, n in enumerate(nets):
        folder = out / f"net{i}"
        if not (folder / name).is_file():
            gen = torch.Generator().manual_seed(i)
            calibration = [torch.randn(*shape, generator=gen) for _ in range(2)] if int8 else None
            export_models(n, folder, shape, ["pte"], calibration=calibration,
                          float_layers=float_layers[i] if float_layers else ())
        paths.append(folder / name)
    x = [torch.randn(*shape)]

    def pte(path: Path) -> float:
        program = path.read_bytes()
        method = load_pte(program, str(path))  # reads the bytes in place: they live as long as this call
        return time_calls(lambda: method.execute(x), warmup, runs)["median_ms"]
    return {f"subnet{i}": (lambda p=p: pte(p)) for i, p in enumerate(paths)}


def timed_rounds(path: Path, key: dict, models: dict, timer: Callable, jobs: dict) -> dict[str, float]:  # noqa: ANN001
    """Each model's and net's time, the lowest over PASSES rounds; every finished round is
    written to ``path`` (with ``key``, what was measured), and a rerun with the same key
    goes on from there."""
    state = read_json(path, fix="delete it") if path.is_file() else {}
    if state.get("key") != key:
        state = {"key": key, "passes": []}
    while len(state["passes"]) < PASSES:
        print(f"  round {len(state['passes']) + 1} of {PASSES}", flush=True)
        state["passes"].append(time_models(models, timer, passes=1, extra=jobs))
        atomic_write_json(path, state)
    return {name: min(p[name] for p in state["passes"]) for name in state["passes"][0]}


def mixed(args: argparse.Namespace, name: str, spec, widths: list[list[int]], nets: list[torch.nn.Module],  # noqa: ANN001
          folder: Path, warmup: int, per_pass: int) -> dict:
    """Mixed-precision nets: random precision per layer and head, the float and int8 rows
    and boundaries timed in the same rounds as the nets; each net predicted from both tables."""
    from repas.deploy.mixed_precision import quantizable_layers
    from repas.deploy.profile import TIMERS

    out = Path(args.out)
    layers = quantizable_layers(nets[0])
    if len(layers) != len(spec.layers) + 1:
        raise SystemExit(f"{name}: executorch-mixed needs a conv per layer and a linear head; "
                         f"the fused net has {layers}")
    rng = random.Random(args.seed + 1)
    precisions = [["float", "int8"] * (len(layers) // 2) + ["float"] * (len(layers) % 2)]  # alternating
    precisions.append([precisions[0][(i + 1) % 2] for i in range(len(layers))])
    while len(precisions) < len(nets):
        chosen = [rng.choice(("float", "int8")) for _ in layers]
        if len(set(chosen)) == 2:  # mixed nets only: the all-float and all-int8 ones are the other backends'
            precisions.append(chosen)
    float_layers = [[n for n, p in zip(layers, ps) if p == "float"] for ps in precisions]
    jobs = pte_jobs(nets, (1, spec.in_channels, *spec.input_size), True, folder / "mixed", warmup, per_pass,
                    float_layers)
    print(f"{name}: {len(nets)} mixed-precision nets exported", flush=True)
    started = time.perf_counter()
    float_timer, float_desc = TIMERS["executorch"](args.threads, warmup, per_pass, out / "programs" / "executorch")
    int8_timer, int8_desc = TIMERS["executorch-int8"](args.threads, warmup, per_pass,
                                                      out / "programs" / "executorch-int8")
    plan = plan_profile(spec, args.divisor, boundaries=True)
    models = plan.models()
    jobs.update({f"int8/{k}": (lambda parts=parts: int8_timer(parts)) for k, parts in models.items()})
    key = {"space": name, "input_size": list(spec.input_size), "divisor": args.divisor, "boundaries": PROBE,
           "threads": args.threads, "widths": widths, "precisions": precisions, "warmup": warmup, "runs": per_pass}
    times = timed_rounds(out / f"times-{name}-executorch-mixed.json", key, models, float_timer, jobs)
    meta = {"device": cpu_name(), "threads": str(args.threads), "date": time.strftime("%Y-%m-%d %H:%M")}
    float_table = assemble_table(plan, times, {**meta, "backend": float_desc})
    int8_table = assemble_table(plan, {k: times[f"int8/{k}"] for k in models}, {**meta, "backend": int8_desc})
    float_table.save(out / f"{name}-executorch-mixed-float.csv")
    int8_table.save(out / f"{name}-executorch-mixed-int8.csv")
    measured = [times[f"subnet{i}"] for i in range(len(nets))]
    predicted = [float(LatencyModel(float_table, spec, precision=ps, int8_table=int8_table)(w))
                 for w, ps in zip(widths, precisions)]
    # for comparison: the same nets all float and all int8, as predicted
    all_float = [float(LatencyModel(float_table, spec)(w)) for w in widths]
    all_int8 = [float(LatencyModel(int8_table, spec)(w)) for w in widths]
    errors = [abs(p_ - m) / m for p_, m in zip(predicted, measured)]
    print(f"## {name} at {'x'.join(map(str, spec.input_size))}, mixed precision: float and int8 tables of "
          f"{len(float_table)} rows each and {len(nets)} nets in {time.perf_counter() - started:.0f} s\n")
    print("| widths | precision (layers, head) | predicted (ms) | measured (ms) | error | all float (ms) | "
          "all int8 (ms) |\n|---|---|---|---|---|---|---|")
    for w, ps, p_, m, f, q in zip(widths, precisions, predicted, measured, all_float, all_int8):
        print(f"| {' / '.join(map(str, w))} | {' '.join('q' if x == 'int8' else 'f' for x in ps)} | {p_:.4g} | "
              f"{m:.4g} | {100 * (p_ - m) / m:+.1f}% | {f:.4g} | {q:.4g} |")
    mape = float(np.mean(errors))
    print(f"\n{name}: MAPE {100 * mape:.1f}% (mixed precision) over {len(nets)} nets (max {100 * max(errors):.1f}%)\n")
    return {"input_size": list(spec.input_size), "table_rows": len(float_table), "mape": mape,
            "float_overhead_ms": float_table.overhead, "int8_overhead_ms": int8_table.overhead,
            "nets": [{"widths": w, "precision": ps, "predicted_ms": p_, "measured_ms": m,
                      "predicted_all_float_ms": f, "predicted_all_int8_ms": q}
                     for w, ps, p_, m, f, q in zip(widths, precisions, predicted, measured, all_float, all_int8)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spaces", nargs="+", default=list(SPACES), choices=list(SPACES))
    p.add_argument("--nets", type=int, default=20)
    p.add_argument("--backend", default="onnxruntime",
                   choices=("onnxruntime", "torch", "executorch", "executorch-int8", "executorch-mixed"))
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
        # the nets' files, by what fixes their widths and shape (ExecuTorch reuses them on a rerun)
        folder = out / name / f"{'x'.join(map(str, spec.input_size))}-div{args.divisor}-seed{args.seed}"
        if args.backend == "executorch-mixed":
            results["spaces"][name] = mixed(args, name, spec, widths, nets, folder, warmup, per_pass)
            continue
        jobs = net_jobs(nets, shape, args.backend, folder, sr, args.threads, warmup, per_pass)
        if args.backend.startswith("executorch"):
            print(f"{name}: {len(nets)} nets exported", flush=True)
        # The table's rows and the whole nets are timed in the same rounds: this machine's
        # speed drifts by tens of percent within minutes (docs/results.md), and a table
        # measured before the nets would compare two different machines.
        started = time.perf_counter()
        timer, description = make_timer(args.backend, args.threads, warmup, per_pass,
                                        cache_dir=out / "programs" / args.backend)
        # on ExecuTorch the table has boundary rows (repas profile measures them there)
        executorch = args.backend.startswith("executorch")
        plan = plan_profile(spec, args.divisor, boundaries=executorch)
        if executorch:  # minutes of lowering: resumable
            key = {"space": name, "input_size": list(spec.input_size), "divisor": args.divisor, "boundaries": PROBE,
                   "threads": args.threads, "widths": widths, "warmup": warmup, "runs": per_pass}
            times = timed_rounds(out / f"times-{name}-{args.backend}.json", key, plan.models(), timer, jobs)
        else:
            times = time_models(plan.models(), timer, passes=PASSES, extra=jobs)
        seconds = time.perf_counter() - started
        meta = {"backend": description, "device": cpu_name(), "threads": str(args.threads), "date": results["date"]}
        table = assemble_table(plan, times, meta)
        table.save(out / f"{name}-{args.backend}.csv")
        measured = [times[f"subnet{i}"] for i in range(len(nets))]
        models = {"model": LatencyModel(table, spec)}
        if executorch:  # the same times without the boundary rows: the constant overhead alone
            models["without boundaries"] = LatencyModel(assemble_table(plan_profile(spec, args.divisor), times, meta),
                                                        spec)
        predicted = {k: [float(m(w)) for w in widths] for k, m in models.items()}
        mape = {k: float(np.mean([abs(p_ - m) / m for p_, m in zip(v, measured)])) for k, v in predicted.items()}
        print(f"## {name} at {'x'.join(map(str, spec.input_size))}: table of {len(table)} rows and {len(nets)} nets "
              f"in {seconds:.0f} s, "
              f"overhead {table.overhead:.4f} ms\n")
        extra = [k for k in models if k != "model"]
        print("| widths | predicted (ms) | measured (ms) | error |" + "".join(f" {k} (ms) | error |" for k in extra))
        print("|---|---|---|---|" + "---|---|" * len(extra))
        for i, (w, m) in enumerate(zip(widths, measured)):
            cells = [f" {predicted[k][i]:.4g} | {100 * (predicted[k][i] - m) / m:+.1f}% |" for k in extra]
            print(f"| {' / '.join(map(str, w))} | {predicted['model'][i]:.4g} | {m:.4g} | "
                  f"{100 * (predicted['model'][i] - m) / m:+.1f}% |" + "".join(cells))
        for k in models:
            errors = [abs(p_ - m) / m for p_, m in zip(predicted[k], measured)]
            label = "" if k == "model" else f" ({k})"
            print(f"\n{name}: MAPE {100 * mape[k]:.1f}%{label} over {len(widths)} nets (max {100 * max(errors):.1f}%)")
        print()
        results["spaces"][name] = {"input_size": list(spec.input_size), "table_rows": len(table),
                                   "table_seconds": seconds, "overhead_ms": table.overhead, "mape": mape["model"],
                                   "nets": [{"widths": w, "predicted_ms": p_, "measured_ms": m}
                                            for w, p_, m in zip(widths, predicted["model"], measured)]}
        if executorch:
            results["spaces"][name]["without_boundaries"] = {
                "overhead_ms": models["without boundaries"].overhead, "mape": mape["without boundaries"],
                "predicted_ms": predicted["without boundaries"]}
    path = out / f"results-{args.backend}.json"
    if path.is_file():  # the spaces measured by earlier runs stay
        results["spaces"] = {**read_json(path, fix="delete it").get("spaces", {}), **results["spaces"]}
    atomic_write_json(path, results)


if __name__ == "__main__":
    main()
