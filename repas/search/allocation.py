"""How widths are allocated for a budget, shared by every pruning method.

A method scores channels; these helpers turn scores into one mask per layer whose cost
meets a target: one global threshold (``threshold_masks``), one width multiplier for every
layer (``uniform_masks``), importance per unit of cost (``allocate_masks``), and the final
fit into ``[target * (1 - tolerance), target]`` in steps of ``step`` channels
(``fit_masks_to_budget``). Widths are always rounded by one rule, ``round_width``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from repas.errors import RepasError
from repas.search.budget import Budget
from repas.search.cost import CostFn, analytic_cost, format_cost
from repas.search.exact_allocation import chain_cost, exact_allocation, fixed_precisions, score_values
from repas.spec import ArchSpec
from repas.supernet.gating import gate_masks, gate_scores
from repas.supernet.net import RepNet

Masks = list[torch.Tensor]


def round_width(width: float, full: int, step: int) -> int:
    """The width rounded to the nearest multiple of ``step``: at least one step (or one
    channel), at most ``full``; a full layer stays full."""
    if step <= 1:
        return max(1, min(full, round(width)))
    if width >= full:
        return full
    return max(1, min(full, max(step, step * round(width / step))))


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest-scored channels."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[torch.argsort(scores, descending=True)[:k]] = True
    return mask


def full_scores(spec: ArchSpec, scores: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """Scores for every layer: ones where a layer is not gated (it never changes)."""
    return [s.detach().float().clone() if s is not None and lay.gated else torch.ones(lay.out_channels)
            for s, lay in zip(scores, spec.layers)]


def layer_normalized(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each layer's scores over their mean: a global ranking of norms whose scale differs
    by layer (fan-in) would otherwise empty the layers with small weights first."""
    return [s / s.mean().clamp_min(1e-12) for s in scores]


def round_masks(masks: Masks, scores: list[torch.Tensor], multiple: int) -> Masks:
    """Round every layer's width to the nearest multiple (``round_width``), keeping the
    channels with the highest scores."""
    if multiple <= 1:
        return [m.clone() for m in masks]
    return [m.clone() if int(m.sum()) == m.numel() else top_k_mask(s, round_width(int(m.sum()), m.numel(), multiple))
            for m, s in zip(masks, scores)]


def _with(widths: list[int], i: int, w: int) -> list[int]:
    out = list(widths)
    out[i] = w
    return out


def fit_masks_to_budget(spec: ArchSpec, masks: Masks, scores: list[torch.Tensor], target: float, *,
                        metric: str = "macs", step: int = 1, tolerance: float = 0.03,
                        model: CostFn | None = None) -> Masks:
    """Move widths in steps of ``step`` channels until the cost lies in
    ``[target * (1 - tolerance), target]``: drop the lowest-scored kept channels while over,
    add back the highest-scored pruned channels while under. Ungated layers never change.
    ``model`` is the cost function (default: the analytic ``metric`` of ``spec``)."""
    fn = model or analytic_cost(spec, metric)
    widths = [int(m.sum()) for m in masks]
    full = [m.numel() for m in masks]
    gated = [lay.gated for lay in spec.layers]
    order = [torch.argsort(s, descending=True) for s in scores]

    def boundary(i: int, w: int) -> float:
        return float(scores[i][order[i][w - 1]]) if w > 0 else float("inf")

    def swap_gain(i: int, j: int) -> float:  # score gained in layer i minus score lost in layer j
        added = order[i][widths[i]:widths[i] + step]
        removed = order[j][widths[j] - step:widths[j]]
        return float(scores[i][added].sum() - scores[j][removed].sum())

    for _ in range(sum(full) + 1):
        c = float(fn(widths))
        if c > target:
            cands = [i for i in range(len(widths)) if gated[i] and widths[i] - step >= 1]
            if not cands:
                break
            i = min(cands, key=lambda i: boundary(i, widths[i]))
            widths[i] -= step
        elif c < target * (1 - tolerance):
            cands = [i for i in range(len(widths)) if gated[i] and widths[i] + step <= full[i]]
            cands = [i for i in cands if float(fn(_with(widths, i, widths[i] + step))) <= target]
            if cands:
                i = max(cands, key=lambda i: float(scores[i][order[i][widths[i]]]))
                widths[i] += step
            elif not _swap_up(widths, full, gated, step, fn, target, target * (1 - tolerance), swap_gain):
                break
        else:
            break
    return [top_k_mask(s, w) for s, w in zip(scores, widths)]


def _swap_up(widths: list[int], full: list[int], gated: list[bool], step: int, fn: CostFn,
             target: float, low: float, gain: Callable[[int, int], float]) -> bool:
    """No single step fits under ``target``: move one step from layer j to layer i. With
    coarse steps (round_to) single steps alone can stop short of ``[low, target]``; a swap of
    a cheap layer's step for a dearer one's closes that gap. Among swaps that land in the
    band, take the one that loses the least importance (``gain(i, j)``); if none does, the
    one that raises the cost most. Returns False when no swap raises the cost."""
    cost = float(fn(widths))
    in_band, closer = [], []
    for i in range(len(widths)):
        if not gated[i] or widths[i] + step > full[i]:
            continue
        for j in range(len(widths)):
            if j == i or not gated[j] or widths[j] - step < 1:
                continue
            c = float(fn(_with(_with(widths, i, widths[i] + step), j, widths[j] - step)))
            if cost < c <= target:
                (in_band if c >= low else closer).append((gain(i, j), c, i, j))
    if in_band:
        _, _, i, j = max(in_band)
    elif closer:
        _, _, i, j = max(closer, key=lambda t: t[1])
    else:
        return False
    widths[i] += step
    widths[j] -= step
    return True


def fit_to_budget(spec: ArchSpec, masks: Masks, scores: list[torch.Tensor], budget: Budget, *, step: int,
                  tolerance: float) -> Masks:
    """``fit_masks_to_budget`` with a Budget's target and cost model."""
    return fit_masks_to_budget(spec, masks, scores, budget.target, metric=budget.metric, step=step,
                               tolerance=tolerance, model=budget.model)


def fit_gates(model: RepNet, budget: Budget, *, step: int = 1, tolerance: float = 0.03, fit: bool = True) -> Masks:
    """The masks a searched supernet is cut by: its gates' masks rounded to ``step``
    channels and (``fit``) moved by gate ranking until the cost meets the budget."""
    masks, scores = gate_masks(model), gate_scores(model)
    masks = round_masks(masks, scores, step)
    if fit:
        masks = fit_to_budget(model.spec, masks, scores, budget, step=step, tolerance=tolerance)
        fitted = float(budget.cost([int(m.sum()) for m in masks]))
        if fitted > budget.target * (1 + 1e-9):
            raise RepasError(f"widths in steps of {step} cannot meet the target {budget.metric} "
                             f"{format_cost(budget.target, budget.metric)} (the closest is "
                             f"{format_cost(fitted, budget.metric)}): lower --round-to or raise the target")
    return masks


def threshold_masks(spec: ArchSpec, scores: list[torch.Tensor], target: float, model: CostFn, *,
                    step: int = 1) -> Masks:
    """One global threshold on the scores (each layer's count rounded to ``step``), the
    lowest threshold whose cost meets ``target``."""
    def masks_at(tau: float) -> Masks:
        return [top_k_mask(s, round_width(int((s > tau).sum()), s.numel(), step)) if lay.gated
                else torch.ones(s.numel(), dtype=torch.bool) for s, lay in zip(scores, spec.layers)]

    finite = torch.cat([s[torch.isfinite(s)] for s in scores])
    masks: Masks = []
    for tau in [float("-inf"), *torch.unique(finite).tolist()]:  # ascending: the first that fits keeps most
        masks = masks_at(tau)
        if float(model([int(m.sum()) for m in masks])) <= target:
            return masks
    return masks


def global_masks(spec: ArchSpec, scores: list[torch.Tensor], budget: Budget, *, step: int = 1,
                 tolerance: float = 0.03) -> Masks:
    """One threshold over all gated channels (scores on one scale), then fitted."""
    masks = threshold_masks(spec, scores, budget.target, budget.model, step=step)
    return fit_to_budget(spec, masks, scores, budget, step=step, tolerance=tolerance)


def uniform_widths(spec: ArchSpec, multiplier: float, step: int = 1) -> list[int]:
    """Every gated layer at ``multiplier`` x its width, rounded by ``round_width``."""
    return [round_width(multiplier * lay.out_channels, lay.out_channels, step) if lay.gated else lay.out_channels
            for lay in spec.layers]


def uniform_masks(spec: ArchSpec, scores: list[torch.Tensor], budget: Budget, *, step: int = 1,
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
    masks = [top_k_mask(s, w) for s, w in zip(scores, widths)]
    return fit_to_budget(spec, masks, scores, budget, step=step, tolerance=tolerance)


def allocate_masks(spec: ArchSpec, scores: list[torch.Tensor], target: float, model: CostFn, *, step: int = 1,
                   threshold: float = 0.5) -> Masks:
    """Widths for ``target`` from one ranking: the gate scores order each layer's channels,
    and widths move in steps of ``step`` by the importance they carry per unit of cost.

    From the full net, remove the step whose channels lose the least importance
    (``score - threshold``, so channels the search switched off go first) per unit of cost
    saved, until the cost is within the target; then add back, while the target allows,
    the steps that bring the most importance per unit of cost. Unlike one global threshold
    on the scores, a channel in a layer that is cheap on this device is worth keeping
    longer than an equally-ranked one in an expensive layer.

    Where the cost is a sum over consecutive layers (a repas spec's MACs, params or latency
    table), the allocation is exact instead: the highest total importance that meets the
    target over every combination of widths in steps of ``step``
    (``repas.search.exact_allocation``). The steps above serve other costs (a user model's)."""
    chain = chain_cost(spec, model)
    if chain is not None:
        fixed = fixed_precisions(model, len(spec.layers))
        widths, _ = exact_allocation(spec, score_values(scores, threshold), chain, target, step=step,
                                     precisions=[[p] for p in fixed] if fixed else None)
        return [top_k_mask(s, w) for s, w in zip(scores, widths)]
    full = [s.numel() for s in scores]
    gated = [lay.gated for lay in spec.layers]
    order = [torch.argsort(s, descending=True) for s in scores]
    value = [(s[o] - threshold).tolist() for s, o in zip(scores, order)]  # importance by rank
    widths = list(full)
    smallest = [min(step, f) for f in full]

    def cheaper(i: int) -> tuple[int, float] | None:
        """The nearest width down that costs less, and its cost: a measured cost is a
        staircase, so one step down may save nothing where two would."""
        w = widths[i]
        while w > smallest[i]:
            w = max(smallest[i], (w - 1) // step * step)
            after = float(model(_with(widths, i, w)))
            if after < now:
                return w, after
        return None

    def upper(i: int) -> int:
        return min(full[i], (widths[i] // step + 1) * step)

    now = float(model(widths))
    while now > target:
        best, best_ratio = None, float("inf")
        for i in range(len(widths)):
            found = cheaper(i) if gated[i] else None
            if found is None:
                continue
            w, after = found
            ratio = sum(value[i][w:widths[i]]) / (now - after)
            if ratio < best_ratio:
                best, best_ratio = (i, w, after), ratio
        if best is None:
            break
        widths[best[0]], now = best[1], best[2]
    while True:
        best, best_ratio = None, -float("inf")
        for i in range(len(widths)):
            if not gated[i] or widths[i] >= full[i]:
                continue
            after = float(model(_with(widths, i, upper(i))))
            if after > target:
                continue
            gain = sum(value[i][widths[i]:upper(i)])
            if gain <= 0:  # channels the search switched off are not worth adding back
                continue
            ratio = gain / (after - now) if after > now else float("inf")
            if ratio > best_ratio:
                best, best_ratio = (i, after), ratio
        if best is None:
            break
        widths[best[0]], now = upper(best[0]), best[1]
    return [top_k_mask(s, w) for s, w in zip(scores, widths)]
