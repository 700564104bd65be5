"""ExecuTorch: lower a module to a .pte program with the XNNPACK delegate, and run one.

ExecuTorch is optional (``pip install 'repas[mobile]'`` brings it on Linux x86_64 and
macOS); every function here raises a RepasError that says how to install it when absent.
A program runs through ``repas.deploy.runner.load_pte`` (the torch-free runner's loader).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from repas.deploy.quiet import native_stderr, quiet_executorch
from repas.errors import RepasError

_THREADS: list[int] = []  # the XNNPACK threadpool size, once set


def executorch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("executorch") is not None


def executorch_version() -> str:
    try:
        import executorch  # noqa: F401
    except ImportError:
        raise RepasError("ExecuTorch is not installed: pip install 'repas[mobile]' (Linux x86_64 / macOS), "
                         "or stay with onnxruntime (export --format onnx, profile --backend onnxruntime)") from None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("executorch")
    except PackageNotFoundError:  # a source checkout
        return "unknown"


def lower_program(model: nn.Module, example: tuple[torch.Tensor, ...]) -> tuple[bytes, Any]:
    """The .pte program of ``model`` (eval mode) traced at ``example``, every supported op
    delegated to XNNPACK, and the lowered edge program (to inspect what was delegated)."""
    executorch_version()
    with quiet_executorch(), torch.no_grad():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        if not isinstance(model, torch.fx.GraphModule):  # a quantized (PT2E) graph has no eval mode
            model = model.eval()
        program = torch.export.export(model, example)
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        return edge.to_executorch().buffer, edge


def lower_to_pte(model: nn.Module, example: tuple[torch.Tensor, ...]) -> bytes:
    """The .pte program of ``model`` (eval mode) traced at ``example``, XNNPACK-delegated."""
    return lower_program(model, example)[0]


def set_executorch_threads(threads: int) -> None:
    """Size XNNPACK's threadpool. It can be set only before the first program runs: a
    later, different size would hang the next call, so that is an error here."""
    with quiet_executorch():
        from executorch.extension.pybindings import portable_lib

    if _THREADS and _THREADS[0] != threads:
        raise RepasError(f"ExecuTorch's threadpool already runs {_THREADS[0]} threads and cannot change in "
                         f"one process; start a new one for {threads}")
    if not _THREADS:
        with native_stderr():  # the runtime logs its CPU probing and the new size: noise
            portable_lib._unsafe_reset_threadpool(threads)
        _THREADS.append(threads)

