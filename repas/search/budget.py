"""The budget objective: ``alpha * (cost / target - 1)^2`` and how a target is resolved."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from repas.errors import RepasError
from repas.search.cost import cost, min_cost, parse_quantity, spec_cost
from repas.spec import ArchSpec


@dataclass
class Budget:
    """A cost target for a search: ``metric`` in MACs or params, ``target`` absolute."""

    spec: ArchSpec
    target: float
    metric: str = "macs"
    alpha: float = 5.0

    def cost(self, widths: list[torch.Tensor | int]) -> torch.Tensor:
        return torch.as_tensor(cost(self.spec, widths, self.metric))

    def loss(self, current_cost: torch.Tensor) -> torch.Tensor:
        return self.alpha * (current_cost / self.target - 1.0) ** 2


def resolve_target(spec: ArchSpec, metric: str = "macs", fraction: float | None = None,
                   absolute: str | float | None = None) -> float:
    """The absolute target from a fraction of dense or an absolute number ('2.5M').

    Raises a RepasError when the target is outside [smallest reachable cost, dense cost].
    """
    dense, smallest = spec_cost(spec, metric), min_cost(spec, metric)
    if (fraction is None) == (absolute is None):
        raise RepasError("give exactly one budget: a fraction of dense (--target 0.5) "
                         f"or an absolute number (--target-{metric} 2.5M)")
    if absolute is not None:
        target = parse_quantity(absolute)
        what = f"target {metric} {target:,.0f}"
    else:
        if not 0 < fraction <= 1:
            raise RepasError(f"--target {fraction} must be a fraction of the dense cost in (0, 1]")
        target = fraction * dense
        what = f"target {fraction} x dense = {target:,.0f} {metric}"
    if target > dense:
        raise RepasError(f"{what} is above the dense cost {dense:,.0f}: nothing to prune; "
                         "lower the target")
    if target < smallest:
        raise RepasError(f"{what} is below the smallest reachable cost {smallest:,.0f} "
                         "(every gated layer at one channel); raise the target")
    return target
