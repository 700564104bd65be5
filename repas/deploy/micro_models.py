"""The micro-models a latency table times: one fused layer, the head, the SR tail, or a
chain of them (a whole fused net), as ONNX graphs and as torch modules.

The ONNX graphs use the ops that ``torch.onnx.export`` writes for a fused RepNet (Conv,
Relu / PRelu, ReduceMean + Reshape + Gemm, Conv + Add + DepthToSpace), built directly
with ``onnx.helper`` because exporting hundreds of one-layer models through the exporter
would take seconds each. ``tests/test_latency.py`` checks both against PyTorch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from repas.latency_table import Key, conv_groups
from repas.sr_geometry import residual_weight

Part = tuple[Key, int, int]  # (table key, c_in, c_out)
OPSET = 18


def input_shapes(parts: list[Part]) -> list[tuple[int, ...]]:
    """The inputs of a chain of parts: its first part's input, plus the LR image for an SR tail."""
    (op, _, _, h, w, _, _, _), c_in, _ = parts[0]
    if op == "overhead":
        return [(1, 1, 1, 1)]
    shapes = [(1, c_in, h, w)]
    tail = [p for p in parts if p[0][0] == "sr_tail"]
    if tail and len(parts) == 1:  # the tail alone: its features and the LR image
        (_, _, _, h, w, _, _, _), c, c_out = tail[0]
        shapes = [(1, c_out, h, w), (1, c, h, w)]
    return shapes


def random_inputs(parts: list[Part], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in input_shapes(parts)]


def _tail_scale(c_in: int, c_out: int) -> int:
    """The upscaling factor of an SR tail: it maps c_in * scale^2 channels to c_in."""
    return round((c_out // c_in) ** 0.5)


def _weights(parts: list[Part], seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for (op, k, _, _, _, g, _, act), c_in, c_out in parts:
        if op == "conv":
            g = conv_groups(g, c_in)
            fan = c_in // g * k * k
            w = {"weight": (rng.standard_normal((c_out, c_in // g, k, k)) / np.sqrt(fan)).astype(np.float32),
                 "bias": rng.standard_normal(c_out).astype(np.float32) * 0.1}
            if act == "prelu":
                w["slope"] = np.full((1, c_out, 1, 1), 0.25, np.float32)
            out.append(w)
        elif op == "head":
            out.append({"weight": (rng.standard_normal((c_out, c_in)) / np.sqrt(c_in)).astype(np.float32),
                        "bias": np.zeros(c_out, np.float32)})
        elif op == "sr_tail":
            out.append({"residual": residual_weight(c_in, _tail_scale(c_in, c_out))})
        else:
            out.append({})
    return out


def onnx_model(parts: list[Part], seed: int = 0):  # noqa: ANN201 (onnx.ModelProto)
    """An ONNX model computing ``parts`` in sequence (random weights)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    shapes = input_shapes(parts)
    inputs = [helper.make_tensor_value_info(f"input{i}" if i else "input", TensorProto.FLOAT, list(s))
              for i, s in enumerate(shapes)]
    x = "input"
    lr = "input1" if len(shapes) > 1 else "input"  # the tail alone: features first, then the LR image
    for i, (part, w) in enumerate(zip(parts, _weights(parts, seed))):
        (op, k, s, _, _, g, d, act), _, c_out = part
        p = f"p{i}_"
        for name, value in w.items():
            inits.append(numpy_helper.from_array(value, p + name))
        if op == "overhead":
            nodes.append(helper.make_node("Identity", [x], [p + "out"]))
        elif op == "conv":
            pad = d * (k // 2)
            nodes.append(helper.make_node("Conv", [x, p + "weight", p + "bias"], [p + "conv"],
                                          group=conv_groups(g, part[1]),
                                          pads=[pad] * 4, strides=[s, s], dilations=[d, d], kernel_shape=[k, k]))
            if act == "relu":
                nodes.append(helper.make_node("Relu", [p + "conv"], [p + "out"]))
            elif act == "prelu":
                nodes.append(helper.make_node("PRelu", [p + "conv", p + "slope"], [p + "out"]))
            else:
                nodes[-1].output[0] = p + "out"
        elif op == "head":
            inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), p + "axes"))
            inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), p + "shape"))
            nodes += [helper.make_node("ReduceMean", [x, p + "axes"], [p + "mean"], keepdims=1),
                      helper.make_node("Reshape", [p + "mean", p + "shape"], [p + "flat"]),
                      helper.make_node("Gemm", [p + "flat", p + "weight", p + "bias"], [p + "out"], transB=1)]
        else:  # sr_tail
            scale = _tail_scale(part[1], c_out)
            nodes += [helper.make_node("Conv", [lr, p + "residual"], [p + "res"], kernel_shape=[1, 1]),
                      helper.make_node("Add", [x, p + "res"], [p + "sum"]),
                      helper.make_node("DepthToSpace", [p + "sum"], [p + "out"], blocksize=scale, mode="CRD")]
        x = p + "out"
    nodes[-1].output[0] = "output"
    graph = helper.make_graph(nodes, "micro", inputs,
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def onnx_bytes(parts: list[Part], seed: int = 0) -> bytes:
    return onnx_model(parts, seed).SerializeToString()


class MicroModule(nn.Module):
    """``parts`` in sequence as a torch module (the same random weights as ``onnx_model``)."""

    def __init__(self, parts: list[Part], seed: int = 0) -> None:
        super().__init__()
        self.parts = parts
        self.params = nn.ParameterList()
        self.index: list[dict[str, int]] = []
        for w in _weights(parts, seed):
            names = {}
            for name, value in w.items():
                names[name] = len(self.params)
                self.params.append(nn.Parameter(torch.from_numpy(value), requires_grad=False))
            self.index.append(names)

    def forward(self, x: torch.Tensor, lr: torch.Tensor | None = None) -> torch.Tensor:
        lr = x if lr is None else lr
        for ((op, k, s, _, _, g, d, act), _, c_out), names in zip(self.parts, self.index):
            w = {n: self.params[i] for n, i in names.items()}
            if op == "conv":
                x = F.conv2d(x, w["weight"], w["bias"], s, d * (k // 2), d, conv_groups(g, x.shape[1]))
                if act == "relu":
                    x = F.relu(x)
                elif act == "prelu":
                    x = F.prelu(x, w["slope"].flatten())
            elif op == "head":
                x = F.linear(torch.flatten(x.mean((2, 3), keepdim=True), 1), w["weight"], w["bias"])
            elif op == "sr_tail":
                scale = _tail_scale(lr.shape[1], c_out)
                x = F.pixel_shuffle(x + F.conv2d(lr, w["residual"]), scale)
        return x
