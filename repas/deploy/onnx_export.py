"""ONNX export of a (fused) network, checked in onnxruntime against PyTorch."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from repas.atomic import atomic_write_bytes
from repas.deploy.runner import onnx_session
from repas.errors import RepasError

__all__ = ["export_onnx", "onnx_session", "run_onnx", "verify_onnx"]


def _require_onnxruntime():  # noqa: ANN202
    try:
        import onnxruntime
    except ImportError:
        raise RepasError("onnxruntime is not installed: pip install 'repas[deploy]'") from None
    return onnxruntime


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, opset: int = 18,
                dynamic_hw: bool = False) -> Path:
    """Export ``model`` (eval mode) at ``input_shape`` to ``path``, atomically; with
    ``dynamic_hw`` the height and width stay free (fully convolutional nets, e.g. SR)."""
    model = model.eval()
    example = torch.randn(*input_shape)
    buf = io.BytesIO()
    dynamic = None
    if dynamic_hw:
        from torch.export import Dim

        dynamic = ({2: Dim("height", min=4, max=16384), 3: Dim("width", min=4, max=16384)},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
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


def verify_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...], trials: int = 3,
                seed: int = 0) -> float:
    """Max abs difference between onnxruntime and PyTorch on random inputs."""
    session = onnx_session(path)
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    model = model.eval()
    with torch.no_grad():
        for _ in range(trials):
            x = torch.randn(*input_shape, generator=gen)
            diff = np.abs(run_onnx(session, x) - model(x).numpy()).max()
            worst = max(worst, float(diff))
    return worst
