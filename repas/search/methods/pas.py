"""PaS (Pruning-as-Search): binary gates learn each layer's width under the budget loss
``alpha * (cost / target - 1)^2``, added to the task loss. Its gates learn in the training
loop (by SGD of their own); ``select`` reads them, rounds to ``step`` and fits the cost to
the budget by gate ranking.

As published, the budget's gradient on a layer's gates is proportional to that layer's
cost per channel, so the costliest layers are thinned first whatever they are worth: on a
U-Net the five full-resolution groups fell to 4 channels in every seed, and a short
ResNet-18 run cut groups to 4 channels and scored chance (issue 32). ``pas`` therefore
divides each layer's budget gradient by its cost per channel (relative to the mean over
the layers): every channel then feels the same pull towards the budget, and the task
loss's gradient decides which channels go.

Equal pulls alone still collapse a short search: gates that all start at 1.0 move down
together and cross the threshold within a few updates of each other, so the net fell to
0.2 % of its MACs (10 % top-1) before the budget's gradient turned round. ``pas`` starts
each layer's gates spread over (threshold, 1] by filter norm, so that a common drift cuts
every layer by the same fraction (uniform scaling) and the task loss moves channels off
that path, and lowers the target from the dense cost to the budget over the first half of
the updates. ``pas-raw`` is PaS as published (gates at 1.0, the target from the start, the
raw gradient), for comparison."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from repas.graph import GatedModel
from repas.search.allocation import fit_gates
from repas.search.cost import format_cost
from repas.search.methods.registry import Masks, PruningMethod, register_method
from repas.search.prunable import filter_norms
from repas.supernet.gating import gate_scores, gate_widths, gated_channels
from repas.supernet.net import RepNet


def per_channel_normalized(counts: list[torch.Tensor | int],
                           cost_fn: Callable[[list], torch.Tensor]) -> list[torch.Tensor | int]:
    """``counts`` (a differentiable count per gated layer, an int per fixed one) with the same
    values, whose gradients are divided by each gated layer's marginal cost per channel
    (``d cost / d count`` at the current counts) over the mean of those: the budget then
    prices every channel alike. A layer whose marginal cost is near zero or negative (a
    latency fit's flat step) is priced at 1/1000 of the mean, not divided by zero."""
    gated = [i for i, c in enumerate(counts) if isinstance(c, torch.Tensor) and c.requires_grad]
    if not gated:
        return counts
    probe = list(counts)
    for i in gated:
        probe[i] = counts[i].detach().float().requires_grad_(True)
    with torch.enable_grad():
        grads = torch.autograd.grad(cost_fn(probe), [probe[i] for i in gated], allow_unused=True)
    marginal = torch.stack([torch.zeros(()) if g is None else g.detach().float().reshape(()) for g in grads])
    mean = marginal.clamp_min(0).mean()
    if not float(mean) > 0:
        return counts
    scale = mean / marginal.clamp_min(1e-3 * float(mean))
    out = list(counts)
    for i, s in zip(gated, scale):
        c = counts[i]
        out[i] = c.detach() + (c - c.detach()) * s.to(c)
    return out


LAGGED = 1.05  # the search's end above this x the budget: the gates did not keep up with the ramp


@torch.no_grad()
def spread_gates(model: RepNet | GatedModel) -> None:
    """Start each gated layer's gate weights evenly spread over (threshold, 1], ordered by
    the channels' filter L1 norms: every channel is on, and a drift common to all gates
    turns each layer's channels off one by one, weakest first (every layer by the same
    fraction: uniform scaling), where gates all at 1.0 cross the threshold at once."""
    for gate, norms in zip(model.gate_modules(), filter_norms(model)):
        if gate is None:
            continue
        n = gate.weight.numel()
        rank = torch.empty(n)
        rank[torch.argsort(norms.float(), stable=True)] = torch.arange(n, dtype=torch.float32)
        gate.weight.copy_(gate.threshold + (1.0 - gate.threshold) * (rank + 0.5) / n)


@register_method("pas")
class PaS(PruningMethod):
    any_model = True
    summary = "Pruning-as-Search: binary gates learn widths under a budget loss, priced per channel (trains)"
    trains = True
    learns_gates = True
    normalized = True
    ramp_fraction: ClassVar[float] = 0.5  # of the search's updates, over which the target falls from dense
    spread_gates: ClassVar[bool] = True  # start each layer's gates spread over (threshold, 1] by filter norm

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.update = 0
        self.total = self.updates_per_epoch * self.epochs
        self.dense_cost = float(self.budget.cost([lay.out_channels for lay in self.model.spec.layers]))
        if self.spread_gates:
            spread_gates(self.model)

    def current_target(self) -> float:
        """The budget this update aims at: the dense cost moving linearly to the target over
        the first ``ramp_fraction`` of the updates, then the target."""
        if self.ramp_fraction <= 0:
            return self.budget.target
        done = min(1.0, self.update / (self.ramp_fraction * self.total))
        return self.dense_cost + (self.budget.target - self.dense_cost) * done

    def after_step(self, update: int) -> None:
        self.update = update

    def state_dict(self) -> dict[str, Any]:
        return {"update": self.update}  # a resumed search goes on down the ramp where it stopped

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.update = int(state.get("update", 0))

    def penalty(self) -> torch.Tensor:
        counts = self.model.channel_counts()
        if self.normalized:
            counts = per_channel_normalized(counts, self.budget.cost)
        return self.budget.alpha * (self.budget.cost(counts) / self.current_target() - 1.0) ** 2

    def metrics(self) -> dict[str, float]:
        return {self.budget.metric: float(self.budget.cost(gate_widths(self.model)))}

    def warnings(self) -> list[str]:
        cost = float(self.budget.cost(gate_widths(self.model)))
        ratio = cost / self.budget.target
        if ratio <= LAGGED:
            return []
        return [f"the search ended at {ratio:.2f} x its target ({format_cost(cost, self.budget.metric)} "
                f"{self.budget.metric}): its gates did not reach the budget, so the widths will come from the "
                "extract stage's fit by gate ranking; raise search.gate_lr (unset, it is "
                f"{self.default_gate_lr():.3g} for the {gated_channels(self.model)} gated channels here), "
                "search.alpha or search.epochs"]

    def select(self, inputs: torch.Tensor | None = None) -> tuple[Masks, list[torch.Tensor]]:
        return fit_gates(self.model, self.budget, step=self.step, tolerance=self.tolerance), gate_scores(self.model)


@register_method("pas-raw")
class PaSRaw(PaS):
    summary = "PaS as published: each layer's budget gradient grows with its cost per channel (trains)"
    normalized = False
    ramp_fraction = 0.0
    spread_gates = False
