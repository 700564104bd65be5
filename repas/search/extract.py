"""Extraction: gates -> widths, and a physically smaller net that inherits sliced weights.

The extracted net equals the gated supernet on every input: output channels of layer l
are sliced by its own mask, input channels by its producer's mask (pruned inputs were
zero in the supernet), and the identity branch keeps a fixed index map from each kept
output channel to the same channel in the kept inputs (or none, where it was pruned).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from repas.search.cost import CostFn, analytic_cost
from repas.spec import ArchSpec
from repas.supernet.net import RepNet


def gate_masks(model: RepNet) -> list[torch.Tensor]:
    """Each layer's kept channels as a bool tensor (all kept where a layer has no gate)."""
    return [g.mask().clone() if g is not None else torch.ones(lay.out_channels, dtype=torch.bool)
            for g, lay in zip(model.gate_modules(), model.spec.layers)]


def gate_scores(model: RepNet) -> list[torch.Tensor]:
    """Continuous gate weights (the channel ranking); +inf where a layer has no gate."""
    return [g.weight.detach().clone() if g is not None else torch.full((lay.out_channels,), float("inf"))
            for g, lay in zip(model.gate_modules(), model.spec.layers)]


def round_masks(masks: list[torch.Tensor], scores: list[torch.Tensor], multiple: int) -> list[torch.Tensor]:
    """Round every layer's width to the nearest multiple (at least one multiple, at most
    the full width), keeping the channels with the highest gate scores."""
    if multiple <= 1:
        return [m.clone() for m in masks]
    out = []
    for m, s in zip(masks, scores):
        full = m.numel()
        width = int(m.sum())
        if width == full:
            out.append(m.clone())
            continue
        width = min(full, max(multiple, multiple * round(width / multiple)))
        out.append(_top_k_mask(s, width))
    return out


def fit_masks_to_budget(spec: ArchSpec, masks: list[torch.Tensor], scores: list[torch.Tensor],
                        target: float, metric: str = "macs", step: int = 1,
                        tolerance: float = 0.03, model: CostFn | None = None) -> list[torch.Tensor]:
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

    def current() -> float:
        return float(fn(widths))

    def swap_gain(i: int, j: int) -> float:  # score gained in layer i minus score lost in layer j
        added = order[i][widths[i]:widths[i] + step]
        removed = order[j][widths[j] - step:widths[j]]
        return float(scores[i][added].sum() - scores[j][removed].sum())

    for _ in range(sum(full) + 1):
        c = current()
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
    return [_top_k_mask(s, w) for s, w in zip(scores, widths)]


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


def allocate_masks(spec: ArchSpec, scores: list[torch.Tensor], target: float, model: CostFn, step: int = 1,
                   threshold: float = 0.5) -> list[torch.Tensor]:
    """Widths for ``target`` from one ranking: the gate scores order each layer's channels,
    and widths move in steps of ``step`` by the importance they carry per unit of cost.

    From the full net, remove the step whose channels lose the least importance
    (``score - threshold``, so channels the search switched off go first) per unit of cost
    saved, until the cost is within the target; then add back, while the target allows,
    the steps that bring the most importance per unit of cost. Unlike one global threshold
    on the scores, a channel in a layer that is cheap on this device is worth keeping
    longer than an equally-ranked one in an expensive layer."""
    full = [s.numel() for s in scores]
    gated = [lay.gated for lay in spec.layers]
    order = [torch.argsort(s, descending=True) for s in scores]
    value = [(s[o] - threshold).tolist() for s, o in zip(scores, order)]  # importance by rank
    widths = list(full)
    smallest = [min(step, f) for f in full]

    def lower(i: int) -> int:  # the next width down: a multiple of step, at least one step
        w = widths[i]
        return max(smallest[i], (w - 1) // step * step)

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
    return [_top_k_mask(s, w) for s, w in zip(scores, widths)]


def threshold_masks(spec: ArchSpec, scores: list[torch.Tensor], target: float, model: CostFn,
                    step: int = 1) -> list[torch.Tensor]:
    """The baseline allocation: one global threshold on the gate scores (each layer's count
    rounded to ``step``, at least one step), the lowest threshold whose cost meets ``target``."""
    def masks_at(tau: float) -> list[torch.Tensor]:
        out = []
        for s, lay in zip(scores, spec.layers):
            if not lay.gated:
                out.append(torch.ones(s.numel(), dtype=torch.bool))
                continue
            w = int((s > tau).sum())
            w = s.numel() if w == s.numel() else min(s.numel(), max(step, step * round(w / step)))
            out.append(_top_k_mask(s, max(w, 1)))
        return out

    finite = torch.cat([s[torch.isfinite(s)] for s in scores])
    for tau in [float("-inf"), *torch.unique(finite).tolist()]:  # ascending: the first that fits keeps most
        masks = masks_at(tau)
        if float(model([int(m.sum()) for m in masks])) <= target:
            return masks
    return masks


def _with(widths: list[int], i: int, w: int) -> list[int]:
    out = list(widths)
    out[i] = w
    return out


def _top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[torch.argsort(scores, descending=True)[:k]] = True
    return mask


def subnet_spec(spec: ArchSpec, masks: list[torch.Tensor], mids: list[dict[str, int]] | None = None) -> ArchSpec:
    """The spec of the net that keeps ``masks[l]`` of layer l: no gates, identity maps, and
    the intermediate widths ``mids[l]`` of two-stage branches kept as they were."""
    d = spec.to_dict()
    mids = mids or [{} for _ in masks]
    in_idx = torch.arange(spec.in_channels)
    for i, (lay, m) in enumerate(zip(d["layers"], masks)):
        out_idx = torch.nonzero(m).flatten()
        if out_idx.numel() == 0:
            raise ValueError(f"layer {i} keeps no channel; every layer needs at least one")
        lay["out_channels"] = int(out_idx.numel())
        lay["gated"] = False
        if mids[i]:
            lay["mid_channels"] = mids[i]
        if any(b in ("identity", "identity_plain") for b in lay["branches"]):
            old_map = lay["identity_map"]
            position = {int(c): p for p, c in enumerate(in_idx)}
            src = [old_map[int(o)] if old_map is not None else int(o) for o in out_idx]
            lay["identity_map"] = [position.get(s, -1) if s >= 0 else -1 for s in src]
        in_idx = out_idx
    d["name"] = f"{spec.name}-sub"
    return ArchSpec.from_dict(d)


@torch.no_grad()
def extract_subnet(model: RepNet, masks: list[torch.Tensor] | None = None) -> RepNet:
    """A smaller RepNet (no gates) equal to ``model`` gated by ``masks`` (default: its gates)."""
    masks = gate_masks(model) if masks is None else masks
    mids = [b.mid_channels() for b in model.blocks]
    sub = RepNet(subnet_spec(model.spec, masks, mids)).to(next(model.parameters()))
    in_idx = torch.arange(model.spec.in_channels)
    for big, small, m in zip(model.blocks, sub.blocks, masks):
        out_idx = torch.nonzero(m).flatten()
        for name, branch in big.branches.items():
            small.branches[name].load_sliced(branch, out_idx, in_idx)
        if hasattr(big.act, "weight"):  # PReLU: one slope per channel
            small.act.weight.copy_(big.act.weight[out_idx])
        if big.fused:
            small.reparam_conv.weight.copy_(big.reparam_conv.weight[out_idx][:, in_idx])
            small.reparam_conv.bias.copy_(big.reparam_conv.bias[out_idx])
        in_idx = out_idx
    if not sub.super_resolution:
        sub.head.weight.copy_(model.head.weight[:, in_idx])
        sub.head.bias.copy_(model.head.bias)
    sub.train(model.training)
    return sub


def gated_copy(model: RepNet, masks: list[torch.Tensor]) -> RepNet:
    """A copy of the supernet whose gates are frozen at ``masks`` (for equality checks)."""
    out = copy.deepcopy(model)
    for g, m in zip(out.gate_modules(), masks):
        if g is not None:
            with torch.no_grad():
                g.weight.copy_(m.to(g.weight.dtype))
            g.freeze()
    return out
