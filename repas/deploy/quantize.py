"""int8 post-training quantization of a fused net, for each runtime with its own tool.

ExecuTorch: PT2E with the XNNPACK quantizer (symmetric per-channel int8 weights, int8
activations), calibrated on the batches given, then lowered like the float net.
onnxruntime: its static QDQ quantizer (per-channel int8 weights, int8 activations) on the
float ONNX file, calibrated on the same batches. Inputs and outputs stay float32 in both,
so a quantized model is a drop-in replacement for the float one.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from repas.atomic import atomic_write_bytes
from repas.deploy.executorch_export import executorch_version
from repas.deploy.quiet import quiet_executorch, quiet_onnx_quantizer
from repas.errors import RepasError


def _calibration_list(batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    out = [b.detach().float() for b in batches]
    if not out:
        raise RepasError("int8 calibration needs at least one batch of inputs")
    return out


@torch.no_grad()
def quantize_pt2e(model: nn.Module, example: torch.Tensor, batches: Iterable[torch.Tensor]) -> nn.Module:
    """``model`` with int8 weights and activations (PT2E, XNNPACK quantizer), calibrated by
    running ``batches`` (tensors of the example's shape) through it. The result runs in
    PyTorch (reference int8 arithmetic) and lowers to a .pte with ``lower_to_pte``."""
    executorch_version()
    with quiet_executorch():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        graph = torch.export.export(model.eval(), (example,)).module()
        prepared = prepare_pt2e(graph, quantizer)
        for x in _calibration_list(batches):
            for i in range(x.shape[0]):  # the graph is traced at batch 1
                prepared(x[i:i + 1])
        return convert_pt2e(prepared)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of batch-1 arrays."""

    def __init__(self, name: str, arrays: Sequence[np.ndarray]) -> None:
        self.name, self.items = name, iter(arrays)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.items, None)
        return None if x is None else {self.name: x}

    def rewind(self) -> None:  # pragma: no cover - called by some calibrators only
        raise RepasError("calibration data cannot be rewound")


def quantize_onnx(float_path: str | Path, out_path: str | Path, batches: Iterable[torch.Tensor],
                  keep_float: Sequence[str] = ()) -> Path:
    """Write the int8 (QDQ) version of the ONNX model at ``float_path`` to ``out_path``,
    atomically, calibrated (min-max) on ``batches``. The layers named in ``keep_float``
    (module names, e.g. ``blocks.0.reparam_conv``: the nodes reading ``<name>.weight``) stay
    float, as in the mixed-precision .pte."""
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise RepasError("int8 ONNX needs onnxruntime and onnx: pip install 'repas[deploy]'") from None
    arrays = [x[i:i + 1].numpy().astype(np.float32) for x in _calibration_list(batches) for i in range(x.shape[0])]
    graph = onnx.load(str(float_path), load_external_data=False).graph
    name = graph.input[0].name
    weights = {f"{layer}.weight" for layer in keep_float}
    exclude = [n.name for n in graph.node if weights & set(n.input)]
    if len(exclude) != len(weights):
        raise RepasError(f"int8 ONNX: the float layers {sorted(keep_float)} match the nodes {exclude} of "
                         f"{float_path}; name each layer by its module name (repas info lists them)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_out = Path(tmp) / "int8.onnx"
        with quiet_onnx_quantizer():
            quantize_static(str(float_path), str(tmp_out), _Reader(name, arrays), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        atomic_write_bytes(out_path, tmp_out.read_bytes())
    return Path(out_path)
