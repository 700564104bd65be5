"""The budget objective: ``alpha * (cost / target - 1)^2`` and how a target is resolved.

The cost is MACs or params (analytic) or latency (a ``LatencyModel`` over a measured table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from repas.errors import RepasError
from repas.search.cost import CostFn, analytic_cost, format_cost, min_cost, parse_quantity, spec_cost
from repas.search.latency import LatencyModel, parse_latency
from repas.spec import ArchSpec


@dataclass
class Budget:
    """A cost target for a search: ``metric`` (macs, params or latency) at ``target``,
    absolute (ms for latency). ``model`` computes the cost; by default the analytic MACs
    or params of ``spec``; latency needs a ``LatencyModel``."""

    spec: ArchSpec
    target: float
    metric: str = "macs"
    alpha: float = 5.0
    model: CostFn | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.target) or self.target <= 0:
            raise RepasError(f"a {self.metric} budget must be a finite number > 0, got {self.target}")
        if self.model is None:
            if self.metric == "latency":
                raise RepasError("a latency budget needs a latency model: Budget(..., model=LatencyModel(...))")
            self.model = analytic_cost(self.spec, self.metric)

    def cost(self, widths: list[torch.Tensor | int]) -> torch.Tensor:
        return torch.as_tensor(self.model(widths))

    def loss(self, current_cost: torch.Tensor) -> torch.Tensor:
        return self.alpha * (current_cost / self.target - 1.0) ** 2


def resolve_target(spec: ArchSpec, metric: str = "macs", *, fraction: float | None = None,
                   absolute: str | float | None = None, model: CostFn | None = None) -> float:
    """The absolute target from a fraction of dense or an absolute number ('2.5M', '1.5ms').

    Raises a RepasError when the target is outside [smallest reachable cost, dense cost].
    """
    dense, smallest = spec_cost(spec, metric, model), min_cost(spec, metric, model)
    if (fraction is None) == (absolute is None):
        raise RepasError("give exactly one budget: a fraction of dense (--target 0.5) "
                         f"or an absolute number (--target-{metric} {'1.5ms' if metric == 'latency' else '2.5M'})")
    if fraction is not None and not math.isfinite(fraction):
        raise RepasError(f"--target {fraction} must be a fraction of the dense cost in (0, 1]")
    if absolute is not None:
        target = parse_latency(absolute) if metric == "latency" else parse_quantity(absolute)
        what = f"target {metric} {format_cost(target, metric)}"
    else:
        if not 0 < fraction <= 1:
            raise RepasError(f"--target {fraction} must be a fraction of the dense cost in (0, 1]")
        target = fraction * dense
        what = f"target {fraction} x dense = {format_cost(target, metric)} {metric}"
    if target > dense:
        raise RepasError(f"{what} is above the dense cost {format_cost(dense, metric)}: nothing to prune; "
                         "lower the target")
    if target < smallest:
        raise RepasError(f"{what} is below the smallest reachable cost {format_cost(smallest, metric)} "
                         "(every gated layer at one channel); raise the target")
    return target


def budget_cost_model(spec: ArchSpec, metric: str, latency_table: str | Path | None = None,
                      int8_latency_table: str | Path | None = None) -> CostFn:
    """The cost of ``spec`` as a function of its widths: analytic MACs or params, or the
    latency model over the measured ``latency_table``; with ``int8_latency_table`` too, each
    layer in its fastest precision (``FastestPrecision``)."""
    if metric == "latency":
        if latency_table is None:
            raise RepasError("a latency budget needs a latency table (repas profile writes one)")
        if int8_latency_table is not None:
            from repas.search.exact_allocation import FastestPrecision

            return FastestPrecision(LatencyModel.load(Path(latency_table), spec, int8_table=int8_latency_table))
        return LatencyModel.load(Path(latency_table), spec)
    return analytic_cost(spec, metric)


def width_multiple(round_to: int, model: CostFn) -> int:
    """The multiple widths are rounded to: ``round_to``, or the latency table's divisor where
    ``round_to`` is 1 and the cost is latency (its grid points are measured, not interpolated)."""
    from repas.search.exact_allocation import FastestPrecision  # (it imports this package)

    if isinstance(model, FastestPrecision):
        model = model.model
    if round_to == 1 and isinstance(model, LatencyModel):
        return model.divisor
    return round_to
