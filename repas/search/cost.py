"""Cost of a network of a given spec at given widths: MACs or parameters of the fused net.

``MACs_l = k*k*H*W*c_in(l)*c_out(l)``, with c_in(l) the width of the layer feeding l (the
image channels for the first), plus the linear head. Params count the fused conv weights
and biases plus the head. Widths may be tensors (gate counts), so the cost is
differentiable in the gate weights through the straight-through estimator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from repas.errors import RepasError
from repas.spec import ArchSpec

METRICS = ("macs", "params")
Width = torch.Tensor | int | float
# A cost as a function of the widths: analytic (MACs, params) or measured (a LatencyModel).
CostFn = Callable[[Sequence[Width]], torch.Tensor | float]


def layer_costs(spec: ArchSpec, widths: Sequence[Width], metric: str = "macs") -> list[torch.Tensor | float]:
    """The cost of every layer of ``spec`` with layer l at ``widths[l]`` output channels,
    then of the head (classifier, or SR's fixed residual conv): one entry more than layers."""
    if metric not in METRICS:
        raise RepasError(f"unknown cost metric {metric!r}; expected one of {METRICS}")
    if len(widths) != len(spec.layers):
        raise ValueError(f"{len(widths)} widths for {len(spec.layers)} layers")
    out: list[torch.Tensor | float] = []
    c_in: Width = spec.in_channels
    for lay, (h, w), c_out in zip(spec.layers, spec.feature_sizes(), widths):
        k2 = lay.kernel * lay.kernel / lay.groups
        out.append(k2 * h * w * c_in * c_out if metric == "macs" else k2 * c_in * c_out + c_out)
        c_in = c_out
    if spec.task == "super-resolution":
        # the global residual: a fixed 1x1 conv repeating the input (no parameters)
        h, w = spec.input_size
        out.append(h * w * spec.in_channels * spec.in_channels * spec.scale ** 2 if metric == "macs" else 0.0)
    else:
        out.append(c_in * spec.num_classes + (0 if metric == "macs" else spec.num_classes))
    return out


def cost(spec: ArchSpec, widths: Sequence[Width], metric: str = "macs") -> torch.Tensor | float:
    """The cost of ``spec`` with layer l at ``widths[l]`` output channels."""
    total: torch.Tensor | float = 0.0
    for part in layer_costs(spec, widths, metric):
        total = total + part
    return total


class AnalyticCost:
    """MACs or params of ``spec`` as a function of the widths (a sum over consecutive
    layers: ``repas.search.exact_allocation`` reads its terms)."""

    def __init__(self, spec: ArchSpec, metric: str) -> None:
        self.spec, self.metric = spec, metric

    def __call__(self, widths: Sequence[Width]) -> torch.Tensor | float:
        return cost(self.spec, widths, self.metric)


def analytic_cost(spec: ArchSpec, metric: str = "macs") -> CostFn:
    """MACs or params of ``spec`` as a function of the widths."""
    if metric not in METRICS:
        raise RepasError(f"unknown cost metric {metric!r}; expected one of {METRICS}")
    return AnalyticCost(spec, metric)


def spec_cost(spec: ArchSpec, metric: str = "macs", model: CostFn | None = None) -> float:
    """The cost of the spec at its own widths (``model``: a cost function in place of ``metric``)."""
    return float((model or analytic_cost(spec, metric))(spec.widths))


def min_cost(spec: ArchSpec, metric: str = "macs", model: CostFn | None = None) -> float:
    """The smallest reachable cost: every gated layer at one channel."""
    widths = [1 if lay.gated else lay.out_channels for lay in spec.layers]
    return float((model or analytic_cost(spec, metric))(widths))


def format_cost(value: float, metric: str) -> str:
    """'3.627 ms' for latency, '3,627,000' for MACs and params."""
    return f"{value:.4g} ms" if metric == "latency" else f"{value:,.0f}"


def parse_quantity(text: str | float | int) -> float:
    """'2.5M' -> 2.5e6; also K and G suffixes; plain numbers pass through. NaN and
    infinities are refused."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip().upper().replace("_", "")
        scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(s[-1:], 1.0)
        try:
            value = float(s[:-1] if scale != 1.0 else s) * scale
        except ValueError:
            raise RepasError(f"cannot read {text!r} as a number: write e.g. 2.5M, 800K or 1.2G") from None
    if not math.isfinite(value):
        raise RepasError(f"{text!r} is not a finite number: write e.g. 2.5M, 800K or 1.2G")
    return value
