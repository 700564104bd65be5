"""ONNX export of a (fused) network; ``repas.deploy.bundle`` checks it in onnxruntime against PyTorch."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from repas.atomic import atomic_write_bytes
from repas.deploy.runner import onnx_session
from repas.errors import RepasError

__all__ = ["export_onnx", "onnx_session", "run_onnx"]


def _require_onnxruntime():  # noqa: ANN202
    try:
        import onnxruntime
    except ImportError:
        raise RepasError("onnxruntime is not installed: pip install 'repas[deploy]'") from None
    return onnxruntime


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, *, opset: int = 18,
                dynamic_hw: bool = False) -> Path:
    """Export ``model`` (eval mode) at ``input_shape`` to ``path``, atomically; with
    ``dynamic_hw`` the height and width stay free (fully convolutional nets, e.g. SR)."""
    try:
        model = model.eval()
    except NotImplementedError:  # a converted int8 graph (torch.export): no train-mode behaviour to switch off
        pass
    example = torch.randn(*input_shape)
    buf = io.BytesIO()
    dynamic = None
    if dynamic_hw:
        from torch.export import Dim

        dynamic = ({2: Dim("height", min=4, max=16384), 3: Dim("width", min=4, max=16384)},)
    # no warning filter: the exporter raises none on fused repas nets (torch 2.14), so a new one is news
    onnx_program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset, dynamic_shapes=dynamic,
                                     input_names=["input"], output_names=["output"], verbose=False)
    onnx_program.save(buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def run_onnx(session, x: np.ndarray | torch.Tensor) -> np.ndarray:  # noqa: ANN001
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    name = session.get_inputs()[0].name
    return session.run(None, {name: x.astype(np.float32)})[0]

