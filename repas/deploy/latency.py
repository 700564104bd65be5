"""Batch-1 latency of an exported model: median over timed runs after warm-up."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from repas.deploy.onnx_export import onnx_session


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one) and its core count."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


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


def onnx_latency(path: str | Path, input_shape: tuple[int, ...], *, threads: int = 1, warmup: int = 50,
                 runs: int = 500) -> dict[str, float]:
    """onnxruntime CPU latency of the model at ``path`` with ``threads`` intra-op threads."""
    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    x = {name: np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)}
    result = time_calls(lambda: session.run(None, x), warmup, runs)
    result["threads"] = threads
    return result


def onnx_latency_interleaved(paths: dict[str, str | Path], input_shape: tuple[int, ...], *, threads: int = 1,
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


def latency_each(factories: dict[str, Callable[[], Callable[[np.ndarray], object]]], input_shape: tuple[int, ...],
                 *, warmup: int = 10, runs: int = 100, passes: int = 5) -> dict[str, float]:
    """Latency (ms) of several models, each timed alone (warm caches, as it runs when
    deployed): in each of ``passes`` rounds a fresh instance from ``factories[name]()`` (a
    new session, a reloaded program) times ``runs / passes`` calls, and a model's latency is
    the lowest of its rounds' medians.

    Why the lowest: on the machine of docs/results.md about one onnxruntime session in three
    runs the same model 30-40% slower than the others, steadily for its whole life, whatever
    the input's alignment; a median over sessions would be that lottery. A transient load
    on the machine likewise spoils one round, not the result."""
    x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    rounds: dict[str, list[float]] = {k: [] for k in factories}
    for _ in range(passes):
        for k, make in factories.items():
            run = make()
            rounds[k].append(time_calls(lambda r=run: r(x), warmup, max(1, runs // passes))["median_ms"])
    return {k: min(v) for k, v in rounds.items()}


def onnx_latency_each(paths: dict[str, str | Path], input_shape: tuple[int, ...], *, threads: int = 1,
                      warmup: int = 10, runs: int = 100, passes: int = 5) -> dict[str, float]:
    """``latency_each`` of ONNX files in onnxruntime at ``threads`` intra-op threads."""
    from repas.deploy.runner import onnx_runner

    return latency_each({k: (lambda p=p: onnx_runner(p, threads)) for k, p in paths.items()}, input_shape,
                        warmup=warmup, runs=runs, passes=passes)
