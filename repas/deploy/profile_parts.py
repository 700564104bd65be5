"""Latency tables of any net given by its parts (a user's own model: ``repas profile`` with
``model.builder``), and the time of a whole module on a backend, which calibrates them."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from repas.deploy.latency import cpu_name, time_calls
from repas.deploy.micro_models import Part
from repas.deploy.profile import BACKENDS, add_measured, make_timer, time_models, timed_models
from repas.errors import RepasError
from repas.latency_table import Key, LatencyTable


def module_job(module: nn.Module, example: torch.Tensor, backend: str, threads: int = 1, warmup: int = 10,
               runs: int = 50) -> Callable[[], float]:
    """One round's median time (ms) of a whole ``module`` on ``backend``, as a job for
    ``time_models``: the module exported once (ONNX, or a .pte through the bundle's XNNPACK
    rewrites, quantized as export quantizes for executorch-int8), each round a new session."""
    module = module.eval()
    if backend == "torch":
        torch.set_num_threads(threads)

        def job() -> float:
            with torch.inference_mode():
                return time_calls(lambda: module(example), warmup, runs)["median_ms"]
        return job
    if backend == "onnxruntime":
        import tempfile

        from repas.deploy.onnx_export import export_onnx, onnx_session

        with tempfile.TemporaryDirectory() as tmp:
            data = export_onnx(module, tuple(example.shape), Path(tmp) / "net.onnx").read_bytes()
        x = {"input": example.numpy()}

        def job() -> float:
            session = onnx_session(data, threads)
            return time_calls(lambda: session.run(None, x), warmup, runs)["median_ms"]
        return job
    if backend not in ("executorch", "executorch-int8"):
        raise RepasError(f"unknown latency backend {backend!r}; expected one of {BACKENDS}")
    from repas.deploy.executorch_export import lower_to_pte, set_executorch_threads
    from repas.deploy.runner import load_pte
    from repas.deploy.xnnpack_rewrites import rewrite_for_xnnpack

    set_executorch_threads(threads)
    module = rewrite_for_xnnpack(module, example)[0]
    if backend == "executorch-int8":
        from repas.deploy.quantize import quantize_pt2e

        module = quantize_pt2e(module, example, [torch.randn_like(example) for _ in range(8)])
    program = lower_to_pte(module, (example,))

    def job() -> float:
        method = load_pte(program)
        return time_calls(lambda: method.execute([example]), warmup, runs)["median_ms"]
    return job


def profile_parts(rows: list[Part], boundaries: list[tuple[Key, int]], wholes: dict[str, nn.Module],
                  example: torch.Tensor, backend: str = "onnxruntime", *, threads: int = 1, warmup: int = 20,
                  runs: int = 200, passes: int = 5, progress: bool = True, meta: dict[str, str] | None = None
                  ) -> tuple[LatencyTable, dict[str, float]]:
    """The rows of a latency table of any net given by its parts (a user's model,
    ``repas.search.graph_latency``), ``rows`` and ``boundaries`` timed one micro-model at a
    time, and the time of each of ``wholes`` (whole nets), timed in the same rounds under the
    same conditions: the caller calibrates the table's overhead on them. The table has no
    overhead row yet."""
    timer, description = make_timer(backend, threads, warmup, max(1, runs // passes))
    started = time.perf_counter()
    extra = {f"whole {name}": module_job(module, example, backend, threads, warmup, max(1, runs // passes))
             for name, module in wholes.items()}
    times = time_models(timed_models(rows, boundaries), timer, passes=passes, progress=progress, extra=extra)
    table = LatencyTable(meta={**(meta or {}), "input_size": "x".join(map(str, example.shape[2:]))})
    add_measured(table, rows, boundaries, times)
    table.meta.update({"backend": description, "device": cpu_name(), "machine": platform.machine(),
                       "threads": str(threads), "warmup": str(warmup), "runs": str(runs), "passes": str(passes),
                       "date": time.strftime("%Y-%m-%d %H:%M:%S"), "empty_model_ms": f"{times['empty']:.6g}",
                       "seconds": f"{time.perf_counter() - started:.1f}"})
    return table, {name: times[f"whole {name}"] for name in wholes}
