"""Methods that train with a regulariser before they prune: ``slimming`` (L1 on BN scales),
``oicsr`` (out-in-channel group lasso), ``admm`` (structured ADMM projections onto
allocations that meet the budget) and ``correlation`` (merge correlated filter pairs).
The regularisers themselves live in ``repas.search.regularizers``."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from repas.search.allocation import fit_to_budget, full_scores, global_masks, round_masks
from repas.search.importance import bn_scales, group_norms
from repas.search.methods.magnitude import l1_scores
from repas.search.methods.registry import Masks, PruningMethod, register_method
from repas.search.regularizers import (
    ADMMProjection,
    CorrelationMerge,
    GroupLassoPenalty,
    Regularizer,
    SlimmingPenalty,
)

ADMM_PROJECTIONS_PER_EPOCH = 4
CORRELATION_ROUNDS = 4


class RegularizedMethod(PruningMethod):
    """Trains with ``self.regularizer`` (penalty, after-step hook, checkpointed state), then
    ``finish``es it and selects masks from what it left."""

    trains = True
    default_strength: ClassVar[float] = 1e-3  # for a task loss of order 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.strength is None:
            self.strength = self.default_strength
        self.regularizer = self.make_regularizer()

    def make_regularizer(self) -> Regularizer:
        raise NotImplementedError

    def penalty(self) -> torch.Tensor:
        return self.regularizer.penalty(self.model)

    def after_step(self, update: int) -> None:
        self.regularizer.after_step(self.model, update)

    def state_dict(self) -> dict[str, Any]:
        return self.regularizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.regularizer.load_state_dict(state)

    def select(self, inputs: torch.Tensor | None = None) -> tuple[Masks, list[torch.Tensor]]:
        self.model.eval()
        self.regularizer.finish(self.model)
        with torch.no_grad():
            return self.select_after_training()

    def select_after_training(self) -> tuple[Masks, list[torch.Tensor]]:
        raise NotImplementedError


@register_method("slimming")
class Slimming(RegularizedMethod):
    summary = "network slimming: L1 on BN scales while training, then one global threshold (trains)"
    default_strength = 1e-4

    def make_regularizer(self) -> Regularizer:
        return SlimmingPenalty(self.strength)

    def select_after_training(self) -> tuple[Masks, list[torch.Tensor]]:
        scores = full_scores(self.model.spec, bn_scales(self.model))
        return global_masks(self.model.spec, scores, self.budget, step=self.step, tolerance=self.tolerance), scores


@register_method("oicsr")
class OICSR(RegularizedMethod):
    summary = "OICSR: out-in-channel group lasso while training, then one global threshold (trains)"

    def make_regularizer(self) -> Regularizer:
        return GroupLassoPenalty(self.strength)

    def select_after_training(self) -> tuple[Masks, list[torch.Tensor]]:
        scores = full_scores(self.model.spec, group_norms(self.model))
        return global_masks(self.model.spec, scores, self.budget, step=self.step, tolerance=self.tolerance), scores


@register_method("admm")
class ADMM(RegularizedMethod):
    summary = "structured ADMM: filters projected onto allocations that meet the budget (trains)"

    def make_regularizer(self) -> Regularizer:
        spec, budget = self.model.spec, self.budget

        def allocate(scores: list[torch.Tensor], target: float) -> Masks:
            return global_masks(spec, scores, budget, step=self.step, tolerance=self.tolerance)

        interval = max(1, self.updates_per_epoch // ADMM_PROJECTIONS_PER_EPOCH)
        return ADMMProjection(self.strength, interval, allocate, budget.target, spec.widths)

    def select_after_training(self) -> tuple[Masks, list[torch.Tensor]]:
        reg = self.regularizer
        scores = full_scores(self.model.spec, reg.scores)
        return fit_to_budget(self.model.spec, [m.clone() for m in reg.masks], scores, self.budget, step=self.step,
                             tolerance=self.tolerance), scores


@register_method("correlation")
class Correlation(RegularizedMethod):
    summary = "merge the most correlated filter pairs in rounds, then fit by L1 norm (trains)"
    default_strength = 1e-2

    def make_regularizer(self) -> Regularizer:
        rounds = CORRELATION_ROUNDS
        return CorrelationMerge(self.strength, max(1, self.updates_per_epoch * self.epochs // rounds), rounds,
                                lambda w: float(self.budget.model(w)), self.budget.target)

    def select_after_training(self) -> tuple[Masks, list[torch.Tensor]]:
        spec, model = self.model.spec, self.model
        scores = l1_scores(self)
        alive = [g.mask() if g is not None else None for g in model.gate_modules()]
        # the channels it switched off rank last
        scores = [s if a is None else torch.where(a, s, s - s.max() - 1) for s, a in zip(scores, alive)]
        masks = [a if a is not None else torch.ones(len(s), dtype=torch.bool) for a, s in zip(alive, scores)]
        return fit_to_budget(spec, round_masks(masks, scores, self.step), scores, self.budget, step=self.step,
                             tolerance=self.tolerance), scores
