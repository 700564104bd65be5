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
loss's gradient decides which channels go. ``pas-raw`` keeps the published gradient, for
comparison."""

from __future__ import annotations

from collections.abc import Callable

import torch

from repas.search.allocation import fit_gates
from repas.search.methods.registry import Masks, PruningMethod, register_method
from repas.supernet.gating import gate_scores, gate_widths


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


@register_method("pas")
class PaS(PruningMethod):
    any_model = True
    summary = "Pruning-as-Search: binary gates learn widths under a budget loss, priced per channel (trains)"
    trains = True
    learns_gates = True
    normalized = True

    def penalty(self) -> torch.Tensor:
        counts = self.model.channel_counts()
        if self.normalized:
            counts = per_channel_normalized(counts, self.budget.cost)
        return self.budget.loss(self.budget.cost(counts))

    def metrics(self) -> dict[str, float]:
        return {self.budget.metric: float(self.budget.cost(gate_widths(self.model)))}

    def select(self, inputs: torch.Tensor | None = None) -> tuple[Masks, list[torch.Tensor]]:
        return fit_gates(self.model, self.budget, step=self.step, tolerance=self.tolerance), gate_scores(self.model)


@register_method("pas-raw")
class PaSRaw(PaS):
    summary = "PaS as published: each layer's budget gradient grows with its cost per channel (trains)"
    normalized = False
