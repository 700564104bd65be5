"""The pruning methods PaS is measured against, producing masks for the same supernet and
budget, so that extract, fine-tune, fuse and export are shared with PaS.

A method turns a trained supernet (gates all on) into one mask per layer whose cost meets
the budget within ``tolerance`` (``fit_masks_to_budget``), and writes it into the gates
(``apply_masks``): the extract stage then reads it like a searched one. Methods that train
first (slimming, oicsr, admm, correlation) bring a ``Regularizer`` for those epochs.

Allocation: ``global`` ranks all gated channels on one scale (one threshold), ``uniform``
gives every gated layer the same width multiplier (the largest that fits), each then
fitted to the budget in steps of ``step`` channels.
"""

from __future__ import annotations

import torch

from repas.config import METHODS
from repas.errors import RepasError
from repas.search.budget import Budget
from repas.search.extract import fit_masks_to_budget, round_masks, threshold_masks
from repas.search.importance import bn_scales, group_norms, l1_norms
from repas.search.regularizers import (
    ADMMProjection,
    CorrelationMerge,
    GroupLassoPenalty,
    Regularizer,
    SlimmingPenalty,
)
from repas.spec import ArchSpec
from repas.supernet.net import RepNet

# methods that train the supernet (gates off the table) with a regulariser before pruning
TRAINED = ("slimming", "oicsr", "admm", "correlation")
# default strength of each regulariser (ADMM: rho), for a task loss of order 1
DEFAULT_STRENGTH = {"slimming": 1e-4, "oicsr": 1e-3, "admm": 1e-3, "correlation": 1e-2}
ADMM_PROJECTIONS_PER_EPOCH = 4
CORRELATION_ROUNDS = 4

Masks = list[torch.Tensor]
__all__ = ["METHODS", "TRAINED", "apply_masks", "global_masks", "make_regularizer", "method_masks", "uniform_masks"]


def check_method(method: str) -> str:
    if method not in METHODS:
        raise RepasError(f"unknown pruning method {method!r}; expected one of {', '.join(METHODS)}")
    return method


def full_scores(spec: ArchSpec, scores: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """Scores for every layer: ones where a layer is not gated (it never changes)."""
    return [s.detach().float().clone() if s is not None and lay.gated else torch.ones(lay.out_channels)
            for s, lay in zip(scores, spec.layers)]


def fit_to_budget(spec: ArchSpec, masks: Masks, scores: list[torch.Tensor], budget: Budget, step: int,
         tolerance: float) -> Masks:
    return fit_masks_to_budget(spec, masks, scores, budget.target, budget.metric, step=step, tolerance=tolerance,
                               model=budget.model)


def global_masks(spec: ArchSpec, scores: list[torch.Tensor], budget: Budget, step: int = 1,
                 tolerance: float = 0.03) -> Masks:
    """One threshold over all gated channels (scores on one scale), then fitted."""
    masks = threshold_masks(spec, scores, budget.target, budget.model, step)
    return fit_to_budget(spec, masks, scores, budget, step, tolerance)


def uniform_widths(spec: ArchSpec, multiplier: float, step: int = 1) -> list[int]:
    """Every gated layer at ``multiplier`` x its width, rounded to ``step`` (at least one step)."""
    out = []
    for lay in spec.layers:
        full = lay.out_channels
        w = full if not lay.gated else min(full, max(step, step * round(multiplier * full / step)))
        out.append(max(1, w))
    return out


def uniform_masks(spec: ArchSpec, scores: list[torch.Tensor], budget: Budget, step: int = 1,
                  tolerance: float = 0.03) -> Masks:
    """The largest common multiplier whose cost meets the target (bisection; cost grows with
    it), each layer keeping its highest-scored channels, then fitted."""
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if float(budget.model(uniform_widths(spec, mid, step))) <= budget.target:
            lo = mid
        else:
            hi = mid
    widths = uniform_widths(spec, lo, step)
    masks = [torch.zeros(len(s), dtype=torch.bool).index_fill_(0, torch.argsort(s, descending=True)[:w], True)
             for s, w in zip(scores, widths)]
    return fit_to_budget(spec, masks, scores, budget, step, tolerance)


def layer_normalized(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each layer's scores over their mean: a global ranking of norms whose scale differs
    by layer (fan-in) would otherwise empty the layers with small weights first."""
    return [s / s.mean().clamp_min(1e-12) for s in scores]


def make_regularizer(method: str, model: RepNet, budget: Budget, step: int, tolerance: float,
                     strength: float | None, updates_per_epoch: int, epochs: int) -> Regularizer | None:
    """The training-time part of ``method`` (None for methods that do not train)."""
    if method not in TRAINED:
        return None
    strength = DEFAULT_STRENGTH[method] if strength is None else strength
    spec = model.spec
    if method == "slimming":
        return SlimmingPenalty(strength)
    if method == "oicsr":
        return GroupLassoPenalty(strength)
    if method == "admm":
        def allocate(scores: list[torch.Tensor], target: float) -> Masks:
            return global_masks(spec, scores, budget, step, tolerance)
        interval = max(1, updates_per_epoch // ADMM_PROJECTIONS_PER_EPOCH)
        return ADMMProjection(strength, interval, allocate, budget.target, spec.widths)
    rounds = CORRELATION_ROUNDS
    return CorrelationMerge(strength, max(1, updates_per_epoch * epochs // rounds), rounds,
                            lambda w: float(budget.model(w)), budget.target)


def method_masks(method: str, model: RepNet, budget: Budget, step: int = 1, tolerance: float = 0.03,
                 regularizer: Regularizer | None = None,
                 inputs: torch.Tensor | None = None) -> tuple[Masks, list[torch.Tensor]]:
    """Masks of ``method`` meeting ``budget`` (after its training, if it trains), and the
    scores that rank each layer's channels. ``lasso`` needs sample ``inputs`` and rewrites
    the next layers' weights; the others leave the weights as they are."""
    check_method(method)
    spec = model.spec
    model.eval()
    if method in TRAINED and regularizer is None:
        raise RepasError(f"method {method} trains before it prunes: pass its regularizer (make_regularizer)")
    if regularizer is not None:
        regularizer.finish(model)
    with torch.no_grad():
        if method == "uniform":  # the first channels: a width multiplier, no importance criterion
            scores = [-torch.arange(lay.out_channels, dtype=torch.float32) for lay in spec.layers]
            return uniform_masks(spec, scores, budget, step, tolerance), scores
        if method in ("l1", "l1-layer", "correlation"):
            scores = full_scores(spec, layer_normalized(l1_norms(model)))
            if method == "l1-layer":
                return uniform_masks(spec, scores, budget, step, tolerance), scores
            if method == "correlation":  # the channels it switched off rank last
                alive = [g.mask() if g is not None else None for g in model.gate_modules()]
                scores = [s if a is None else torch.where(a, s, s - s.max() - 1) for s, a in zip(scores, alive)]
                masks = [a if a is not None else torch.ones(len(s), dtype=torch.bool)
                         for a, s in zip(alive, scores)]
                return fit_to_budget(spec, round_masks(masks, scores, step), scores, budget, step, tolerance), scores
            return global_masks(spec, scores, budget, step, tolerance), scores
        if method == "slimming":
            scores = full_scores(spec, bn_scales(model))
            return global_masks(spec, scores, budget, step, tolerance), scores
        if method == "oicsr":
            scores = full_scores(spec, group_norms(model))
            return global_masks(spec, scores, budget, step, tolerance), scores
        if method == "admm":
            scores = full_scores(spec, regularizer.scores)
            return fit_to_budget(spec, [m.clone() for m in regularizer.masks], scores, budget, step, tolerance), scores
    if method == "lasso":
        from repas.search.lasso import lasso_masks

        if inputs is None:
            raise RepasError("method lasso samples feature maps: pass inputs (a batch of training images)")
        return lasso_masks(model, inputs, budget, step, tolerance)
    if method == "torch-pruning":
        from repas.search.torch_pruning_peer import torch_pruning_masks

        return torch_pruning_masks(model, budget, step, tolerance)
    raise RepasError(f"method {method} selects no masks here: PaS learns them in the search stage")


def apply_masks(model: RepNet, masks: Masks, scores: list[torch.Tensor]) -> None:
    """Write masks into the (frozen) gates so that the extract stage reads them: kept
    channels get weights in [1, 2), pruned ones in [0, 0.4], ordered by ``scores`` within
    each layer, so a later re-fit ranks channels as the method did."""
    with torch.no_grad():
        for g, m, s in zip(model.gate_modules(), masks, scores):
            if g is None:
                continue
            rank = torch.empty(len(s))
            rank[torch.argsort(s)] = torch.arange(len(s), dtype=torch.float32) / len(s)
            g.weight.copy_(torch.where(m, 1.0 + rank, 0.4 * rank))
            g.freeze()
