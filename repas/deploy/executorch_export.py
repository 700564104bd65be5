"""ExecuTorch: lower a module to a .pte program with the XNNPACK delegate, and run one.

ExecuTorch is optional (``pip install 'repas[mobile]'`` brings it on Linux x86_64 and
macOS); every function here raises a RepasError that says how to install it when absent.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

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
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
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
    from executorch.extension.pybindings import portable_lib

    if _THREADS and _THREADS[0] != threads:
        raise RepasError(f"ExecuTorch's threadpool already runs {_THREADS[0]} threads and cannot change in "
                         f"one process; start a new one for {threads}")
    if not _THREADS:
        portable_lib._unsafe_reset_threadpool(threads)
        _THREADS.append(threads)


def load_pte(program: bytes) -> Any:  # noqa: ANN401 (executorch.runtime.Method)
    """The forward method of a .pte program, ready for ``method.execute([inputs])``.

    The runtime reads ``program`` in place: keep the bytes alive as long as the method."""
    executorch_version()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from executorch.runtime import Runtime

        return Runtime.get().load_program(program).load_method("forward")
