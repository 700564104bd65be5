"""Per-layer int8: which layers of a fused net are quantized, and what each one costs.

``quantize_layers`` quantizes a fused net post-training with the XNNPACK quantizer export
uses, leaving the layers named in ``keep_float`` in float (mixed precision: XNNPACK runs
both kinds in one delegate, with a quantize / dequantize pair at each boundary), or
quantizing ``only`` the layers named. ``int8_sensitivity`` measures, layer by layer, how
much a metric drops when only that layer is int8: the report that says which layers to
keep in float. Layers are named as ``model.named_modules()`` names their convs and linears.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from repas.deploy.qat import DEFAULT_OBSERVER, quantize_ptq
from repas.errors import RepasError


def quantizable_layers(model: nn.Module) -> list[str]:
    """The names of the layers int8 applies to: every conv and linear, in order."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def check_layers(model: nn.Module, names: Iterable[str], what: str) -> list[str]:
    """``names`` if each is a layer of ``model`` int8 applies to; else one RepasError line
    that names the ones it has."""
    names, have = list(names), quantizable_layers(model)
    unknown = [n for n in names if n not in have]
    if unknown:
        raise RepasError(f"{what} names {', '.join(map(repr, unknown))}, which the net does not have; its layers: "
                         f"{', '.join(have)}")
    return names


def _is_weight_op(node: Any) -> bool:  # noqa: ANN401 (torch.fx.Node)
    return node.op == "call_function" and any(k in str(node.target) for k in ("conv", "linear", "addmm"))


def layer_filter(names: Sequence[str], inside: bool) -> Callable[[Any], bool]:
    """A node filter for the quantizer. Its patterns (conv + ReLU, ...) are annotated only
    when every node passes, so a weight op (conv, linear) passes when it belongs (``inside``)
    or does not belong (not ``inside``) to one of the modules ``names``, and the other nodes
    (activations, pooling) always pass: they follow the layer they are fused with."""
    def in_names(node: Any) -> bool:  # noqa: ANN401
        stack = node.meta.get("nn_module_stack") or {}
        paths = [str(v[0]) for v in stack.values()]
        return any(p == n or p.startswith(n + ".") for p in paths for n in names)

    def keep(node: Any) -> bool:  # noqa: ANN401
        return not _is_weight_op(node) or in_names(node) == inside
    return keep


def quantize_layers(model: nn.Module, example: torch.Tensor, batches: Iterable[torch.Tensor], *,
                    keep_float: Sequence[str] = (), only: Sequence[str] | None = None,
                    observer: str = DEFAULT_OBSERVER) -> torch.fx.GraphModule:
    """``model`` (fused, eval) post-training int8 but for the layers in ``keep_float`` (or
    int8 in the layers of ``only`` alone), calibrated on ``batches``: ``quantize_ptq`` with
    a node filter."""
    check_layers(model, [*keep_float, *(only or [])], "the int8 layer list")
    node_filter = (layer_filter(list(only), inside=True) if only is not None else
                   layer_filter(list(keep_float), inside=False) if keep_float else None)
    return quantize_ptq(model, example, batches, observer, node_filter=node_filter)


def int8_sensitivity(model: nn.Module, example: torch.Tensor, batches: list[torch.Tensor],
                     score: Callable[[nn.Module], float], *, observer: str = DEFAULT_OBSERVER) -> dict[str, float]:
    """For each layer, ``score`` (higher is better: top-1, PSNR) of the net with only that
    layer in int8, minus the float net's score. A large negative value marks a layer to keep
    in float."""
    reference = score(model)
    return {name: score(quantize_layers(model, example, batches, only=[name], observer=observer)) - reference
            for name in quantizable_layers(model)}
