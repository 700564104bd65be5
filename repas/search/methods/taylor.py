"""``taylor``: first-order Taylor importance of every channel, pruned gradually while the
net trains, by importance per unit of cost (Molchanov et al. 2019; HALP's allocation).

A channel's importance is how much the loss would change if it were switched off, to
first order: its gate's gradient, since the gate multiplies the channel's output. Squared
per batch and summed over the batches of a round (Molchanov's estimate), it is on the
scale of the loss for every layer, so layers compare without normalisation. In ``rounds``
rounds spread over the first ``prune_fraction`` of the training updates, the target moves
from the dense cost to the budget; at each round the channels are allocated by
``allocate_masks`` (importance per unit of the budget's cost: MACs, params or measured
latency), never bringing back a pruned channel. The rest of the epochs train the net at
its final widths, so the weights adapt to the pruning they have lived through.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from repas.search.allocation import allocate_masks, fit_to_budget
from repas.search.methods.registry import Masks, PruningMethod, register_method
from repas.supernet.gating import gate_masks

PRUNED = -1e30  # the score of a channel already pruned: removed first, never added back


@register_method("taylor")
class Taylor(PruningMethod):
    any_model = True
    summary = "Taylor importance (gate gradients), pruned in rounds by importance per unit of cost while training"
    trains = True
    rounds: ClassVar[int] = 4
    prune_fraction: ClassVar[float] = 0.5  # of the search's updates; the rest train at the final widths

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gates = self.model.gate_modules()
        for g in self.gates:  # gradients on the gates, but no optimizer moves them
            if g is not None:
                g.freeze(False)
        self.importance = [torch.zeros(lay.out_channels) for lay in self.model.spec.layers]
        total = self.updates_per_epoch * self.epochs
        self.interval = max(1, int(total * self.prune_fraction) // self.rounds)
        self.round = 0
        self.masks: Masks | None = None  # the current decision, written into the gates

    def after_step(self, update: int) -> None:
        masks = gate_masks(self.model) if self.masks is None else self.masks
        for i, g in enumerate(self.gates):
            if g is not None and g.weight.grad is not None:
                self.importance[i] += g.weight.grad.detach().float().cpu().square()
                g.weight.grad = None
        self._write(masks)  # an optimizer the gates were given by mistake cannot move them
        if self.round < self.rounds and update % self.interval == 0:
            self.round += 1
            self._prune_to(self._goal())

    def _goal(self) -> float:
        dense = float(self.budget.cost(self.model.spec.widths))
        return dense - (dense - self.budget.target) * self.round / self.rounds

    def scores(self) -> list[torch.Tensor]:
        """Importance of every channel, PRUNED for those already switched off."""
        return [torch.where(m, imp, torch.full_like(imp, PRUNED)) for m, imp in zip(gate_masks(self.model),
                                                                                       self.importance)]

    @torch.no_grad()
    def _prune_to(self, goal: float) -> None:
        self.masks = allocate_masks(self.model.spec, self.scores(), goal, self.budget.model, step=self.step,
                                    threshold=0.0)
        self._write(self.masks)
        self.importance = [torch.zeros_like(imp) for imp in self.importance]  # each round judges afresh

    @torch.no_grad()
    def _write(self, masks: Masks) -> None:
        for g, m in zip(self.gates, masks):
            if g is not None:
                g.weight.copy_(m.to(g.weight))

    def select(self, inputs: torch.Tensor | None = None) -> tuple[Masks, list[torch.Tensor]]:
        if self.round < self.rounds:  # fewer updates than the schedule: the remaining rounds at once
            self.round = self.rounds
            self._prune_to(self.budget.target)
        scores = self.scores()
        # rank the kept channels above the pruned ones, by importance within each
        ranked = [torch.where(s > PRUNED, s + 1.0, torch.zeros_like(s)) for s in scores]
        masks = fit_to_budget(self.model.spec, gate_masks(self.model), ranked, self.budget, step=self.step,
                              tolerance=self.tolerance)
        return masks, ranked

    def metrics(self) -> dict[str, float]:
        return {self.budget.metric: float(self.budget.cost([int(m.sum()) for m in gate_masks(self.model)]))}

    def state_dict(self) -> dict[str, Any]:
        return {"importance": self.importance, "round": self.round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.importance = [t.cpu() for t in state.get("importance", self.importance)]
        self.round = int(state.get("round", 0))
