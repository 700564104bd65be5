"""Time the micro-models of a latency table on this device; needs only numpy and the runtime.

Standalone (no repas, no torch for onnxruntime): copy it to the device with the folder
that scripts/export_micro_models.py wrote, then

    python time_micro_models.py FOLDER [--backend onnxruntime|executorch] [--threads 1]

writes FOLDER/times.json; ``repas profile --from-device FOLDER`` turns it into a table.
A model's time is the lowest, over --passes rounds with a new session each, of the median
of its calls: the statistic ``repas profile`` uses.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def median_ms(fn, warmup: int, runs: int) -> float:  # noqa: ANN001
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def onnxruntime_caller(path: Path, inputs: list[np.ndarray], threads: int):  # noqa: ANN201
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    names = [i.name for i in session.get_inputs()]
    for name, x in zip(names, inputs):
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x))
    out = session.run(None, dict(zip(names, inputs)))[0]
    binding.bind_ortvalue_output("output", ort.OrtValue.ortvalue_from_numpy(np.empty_like(out)))
    return lambda: session.run_with_iobinding(binding), f"onnxruntime {ort.__version__} CPUExecutionProvider"


def executorch_caller(path: Path, inputs: list[np.ndarray], threads: int):  # noqa: ANN201
    import executorch
    import torch
    from executorch.runtime import Runtime

    program = path.with_suffix(".pte").read_bytes()
    method = Runtime.get().load_program(program).load_method("forward")
    tensors = [torch.from_numpy(x) for x in inputs]
    return (lambda p=program: method.execute(tensors)), f"executorch {executorch.__version__} XNNPACK"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder")
    p.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "executorch"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=10, help="timed calls per pass")
    p.add_argument("--passes", type=int, default=5)
    args = p.parse_args()
    folder = Path(args.folder)
    plan = json.loads((folder / "plan.json").read_text())
    if args.backend == "executorch":
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(args.threads)  # only before the first program runs
    caller = executorch_caller if args.backend == "executorch" else onnxruntime_caller
    rng = np.random.default_rng(0)
    best: dict[str, float] = {}
    backend = ""
    for _ in range(args.passes):
        for name, shapes in plan["inputs"].items():
            inputs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
            call, backend = caller(folder / f"{name}.onnx", inputs, args.threads)
            ms = median_ms(call, args.warmup, args.runs)
            best[name] = min(ms, best.get(name, float("inf")))
    meta = {"backend": backend, "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "machine": platform.machine(), "threads": args.threads, "warmup": args.warmup,
            "runs": args.runs * args.passes, "passes": args.passes, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    tmp = folder / "times.json.tmp"
    tmp.write_text(json.dumps({"meta": meta, "times_ms": best}, indent=1))
    os.replace(tmp, folder / "times.json")
    print(f"timed {len(best)} models on {backend}, {args.threads} thread(s): {folder / 'times.json'}")


if __name__ == "__main__":
    main()
