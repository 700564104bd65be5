"""Batch-1 latency of an exported model: median over timed runs after warm-up."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from repas.deploy.onnx_export import onnx_session


def time_calls(fn, warmup: int, runs: int) -> dict[str, float]:  # noqa: ANN001
    """Median / p90 / min wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))],
            "min_ms": times[0], "runs": runs}


def onnx_latency(path: str | Path, input_shape: tuple[int, ...], threads: int = 1, warmup: int = 50,
                 runs: int = 500) -> dict[str, float]:
    """onnxruntime CPU latency of the model at ``path`` with ``threads`` intra-op threads."""
    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    x = {name: np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)}
    result = time_calls(lambda: session.run(None, x), warmup, runs)
    result["threads"] = threads
    return result


def onnx_latency_interleaved(paths: dict[str, str | Path], input_shape: tuple[int, ...], threads: int = 1,
                             warmup: int = 50, runs: int = 500) -> dict[str, dict[str, float]]:
    """Latency of several models measured in turn, one call each per round, so that noise
    from the machine falls on all of them alike; comparable as ratios."""
    sessions = {k: onnx_session(p, threads) for k, p in paths.items()}
    x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    for _ in range(warmup):
        for k, s in sessions.items():
            s.run(None, feeds[k])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds[k])
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v), "threads": threads, "runs": runs}
            for k, v in times.items()}
