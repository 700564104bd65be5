"""Exact rewrites that let XNNPACK take a whole net: ops ExecuTorch's XNNPACK partitioner
leaves out, replaced by ops it takes that compute the same values.

- ``nn.Upsample(mode="nearest")`` by an integer factor s: a depthwise ``ConvTranspose2d``
  with an s x s kernel of ones and stride s copies each pixel into its s x s block, which
  is nearest upsampling exactly (one product by 1.0 per output: no rounding). Without it,
  a U-Net's decoder runs on ExecuTorch's portable kernels, outside the delegate.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _integer_factor(up: nn.Upsample) -> int | None:
    """The upsampling's integer factor, the same for height and width, or None."""
    if up.mode != "nearest" or up.size is not None or up.scale_factor is None:
        return None
    factors = up.scale_factor if isinstance(up.scale_factor, tuple) else (up.scale_factor,) * 2
    if len(set(factors)) != 1 or float(factors[0]) != int(factors[0]) or int(factors[0]) < 2:
        return None
    return int(factors[0])


def nearest_as_transposed_conv(channels: int, factor: int) -> nn.ConvTranspose2d:
    """The depthwise transposed convolution equal to nearest upsampling by ``factor``."""
    up = nn.ConvTranspose2d(channels, channels, factor, stride=factor, groups=channels, bias=False)
    with torch.no_grad():
        up.weight.fill_(1.0)
    return up.requires_grad_(False)


class NearestAsTransposedConv(nn.Module):
    """Nearest upsampling by ``factor`` as depthwise transposed convs, one per channel count
    the module meets (a U-Net may call one ``nn.Upsample`` at several depths); the count
    is static when a net is exported, so each call site traces to one conv."""

    def __init__(self, factor: int, channels: list[int]) -> None:
        super().__init__()
        self.factor = factor
        self.convs = nn.ModuleDict({str(c): nearest_as_transposed_conv(c, factor) for c in sorted(set(channels))})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs[str(x.shape[1])](x)


@torch.no_grad()
def rewrite_for_xnnpack(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with every rewritable op replaced (see the module docstring), and
    the names of the modules replaced; ``model`` itself is left as it is."""
    targets = {n: f for n, m in model.named_modules() if isinstance(m, nn.Upsample) and (f := _integer_factor(m))}
    if not targets:
        return model, []
    channels: dict[str, list[int]] = {}

    def record(name: str):  # noqa: ANN202 (a forward hook; it must return None, or it replaces the output)
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            channels.setdefault(name, []).append(int(inputs[0].shape[1]))
        return hook

    hooks = [model.get_submodule(n).register_forward_hook(record(n)) for n in targets]
    try:
        model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    out = copy.deepcopy(model)
    done = []
    for name, factor in targets.items():
        if name not in channels:
            continue  # not on the path the example takes
        parent, _, leaf = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, leaf, NearestAsTransposedConv(factor, channels[name]))
        done.append(name)
    return out, done
