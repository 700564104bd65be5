"""PaS (Pruning-as-Search): binary gates learn each layer's width under the budget loss
``alpha * (cost / target - 1)^2``, added to the task loss; kept as the faithful published
method. Its gates learn in the training loop (by SGD of their own); ``select`` reads them,
rounds to ``step`` and fits the cost to the budget by gate ranking."""

from __future__ import annotations

import torch

from repas.search.allocation import fit_gates
from repas.search.methods.registry import Masks, PruningMethod, register_method
from repas.supernet.gating import gate_scores, gate_widths


@register_method("pas")
class PaS(PruningMethod):
    any_model = True
    summary = "Pruning-as-Search: binary gates learn widths under a budget loss (trains)"
    trains = True
    learns_gates = True

    def penalty(self) -> torch.Tensor:
        return self.budget.loss(self.budget.cost(self.model.channel_counts()))

    def metrics(self) -> dict[str, float]:
        return {self.budget.metric: float(self.budget.cost(gate_widths(self.model)))}

    def select(self, inputs: torch.Tensor | None = None) -> tuple[Masks, list[torch.Tensor]]:
        return fit_gates(self.model, self.budget, step=self.step, tolerance=self.tolerance), gate_scores(self.model)
