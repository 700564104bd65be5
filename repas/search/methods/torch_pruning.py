"""The external peer: Torch-Pruning (DepGraph) with group magnitude importance and global
pruning, on the same network and budget.

Torch-Pruning traces plain modules; the supernet's identity branches read channels through
an index map it cannot follow, so it prunes the supernet's fused form (one conv per
block, equal in eval mode), laid out as a plain ``nn.Sequential``. Its global pruning
ratio is bisected until the cost meets the budget; the channels it removed become the
supernet's masks, so the inherited weights and fine-tuning are those of every other method.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from repas.errors import RepasError
from repas.search.allocation import fit_to_budget, full_scores
from repas.search.budget import Budget
from repas.search.importance import group_norms
from repas.search.methods.registry import PruningMethod, register_method
from repas.supernet.fused import fuse_repnet
from repas.supernet.net import RepNet

Masks = list[torch.Tensor]


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError:
        raise RepasError("method torch-pruning needs the package: pip install 'repas[baselines]'") from None
    return torch_pruning


def plain_sequential(model: RepNet) -> tuple[nn.Sequential, list[str], list[nn.Module]]:
    """The fused net as Sequential(conv, act, ..., [pool, flatten, linear]): the conv names
    and the layers Torch-Pruning must not prune (ungated convs, the classifier)."""
    fused = fuse_repnet(copy.deepcopy(model).eval())
    layers: list[nn.Module] = []
    names, ignored = [], []
    for block, lay in zip(fused.blocks, model.spec.layers):
        names.append(str(len(layers)))
        layers += [block.reparam_conv, block.act]
        if not lay.gated:
            ignored.append(block.reparam_conv)
    if not fused.super_resolution:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), fused.head]
        ignored.append(fused.head)
    return nn.Sequential(*layers).eval(), names, ignored


def prune_once(model: RepNet, ratio: float, step: int) -> Masks:
    """The masks Torch-Pruning's global magnitude pruning leaves at ``ratio``."""
    tp = _torch_pruning()
    net, names, ignored = plain_sequential(model)
    x = torch.zeros(1, model.spec.in_channels, *model.spec.input_size)
    pruner = tp.pruner.MetaPruner(net, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  global_pruning=True, pruning_ratio=ratio, max_pruning_ratio=0.95,
                                  ignored_layers=ignored, round_to=step if step > 1 else None)
    pruner.step()
    masks = [torch.ones(lay.out_channels, dtype=torch.bool) for lay in model.spec.layers]
    where = {n: i for i, n in enumerate(names)}
    for name, is_out, idxs in pruner.pruning_history():
        if is_out and name in where:
            masks[where[name]][list(idxs)] = False
    return masks


def torch_pruning_masks(model: RepNet, budget: Budget, step: int = 1,
                        tolerance: float = 0.03) -> tuple[Masks, list[torch.Tensor]]:
    """The smallest global ratio whose pruned widths meet the target (bisection), then
    fitted to the budget by group norm like every other method."""
    lo, hi = 0.0, 0.95
    best = None
    for _ in range(12):
        mid = (lo + hi) / 2
        masks = prune_once(model, mid, step)
        if float(budget.model([int(m.sum()) for m in masks])) <= budget.target:
            best, hi = masks, mid
        else:
            lo = mid
    if best is None:
        best = prune_once(model, hi, step)
    with torch.no_grad():
        scores = full_scores(model.spec, group_norms(model))
    scores = [torch.where(m, s + s.max() + 1, s) for m, s in zip(best, scores)]  # TP's choice ranks first
    return fit_to_budget(model.spec, best, scores, budget, step=step, tolerance=tolerance), scores


@register_method("torch-pruning")
class TorchPruning(PruningMethod):
    summary = "the external peer: Torch-Pruning's global group-magnitude pruner on the fused net"

    def select(self, inputs: torch.Tensor | None = None) -> tuple[Masks, list[torch.Tensor]]:
        return torch_pruning_masks(self.model, self.budget, self.step, self.tolerance)
