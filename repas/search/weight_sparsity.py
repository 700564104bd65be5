"""Weight-level (unstructured) sparsity of a net in deploy form: the cost a runtime that
skipped zero weights would pay, the masks that meet a budget in that cost, and the
fine-tune term that keeps pruned weights at zero.

The zeros live in the weights of each block's one conv (``repas.supernet.conv_bn_form``:
the branches summed into one conv + BN, which folds into the deploy form with its zeros
kept): a multi-branch block's identity and 1x1 branches add to its kernel's centre, so a
zero of the fused kernel cannot be held by masking any one branch. No runtime measured here turns
these zeros into speed (docs/results.md, ``scripts/bench_sparse_runtime.py``): the dense
runtimes compute them, so the saving is in the cost that a zero-skipping runtime would pay.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from repas.errors import RepasError
from repas.search.budget import Budget
from repas.spec import ArchSpec

ACCURACY_ONLY = ("accuracy only: no runtime here skips zero weights (docs/results.md), so the exported net runs "
                 "at its dense latency")


def block_convs(model: nn.Module) -> list[nn.Conv2d]:
    """Every block's one conv: the fused conv of the deploy form, or the conv of the
    one-branch conv + BN form (``repas.supernet.conv_bn_form``)."""
    convs = [b.reparam_conv if b.fused else b.branches["conv"].conv if list(b.branches) == ["conv"] else None
             for b in model.blocks]
    if any(c is None for c in convs):
        raise RepasError("weight sparsity is set on each block's one conv: put the net in its one-branch form first "
                         "(repas.supernet.conv_bn_form)")
    return convs


def one_conv_form(model: nn.Module) -> bool:
    """Every block is one conv (deploy form, or one conv + BN): weight zeros can be held."""
    return all(b.fused or list(b.branches) == ["conv"] for b in model.blocks)


def weight_costs(spec: ArchSpec, metric: str) -> list[float]:
    """What one weight of each layer's conv costs: its output pixels (MACs) or 1 (params)."""
    if metric not in ("macs", "params"):
        raise RepasError(f"weight sparsity saves no latency in any runtime measured here (docs/results.md): budget "
                         f"an unstructured method in macs or params, not {metric}")
    return [float(h * w) if metric == "macs" else 1.0 for h, w in spec.feature_sizes()]


def sparse_cost(model: nn.Module, budget: Budget) -> float:
    """The budget's cost of ``model`` (deploy form) with its zero conv weights skipped."""
    dense = float(budget.cost(model.spec.widths))
    costs = weight_costs(model.spec, budget.metric)
    return dense - sum(c * float((conv.weight == 0).sum()) for c, conv in zip(costs, block_convs(model)))


def density(model: nn.Module) -> float:
    """The fraction of the fused conv weights that are not zero."""
    convs = block_convs(model)
    return sum(float((c.weight != 0).sum()) for c in convs) / sum(c.weight.numel() for c in convs)


def masks_by_cost(scores: list[torch.Tensor], costs: list[torch.Tensor | float], remove: float) -> list[torch.Tensor]:
    """Boolean keep-masks shaped like ``scores``: the lowest-scored entries (one global
    ranking) are dropped until their summed cost (``costs``: per entry of each tensor,
    a tensor of its shape or one number) reaches ``remove``."""
    if remove <= 0:
        return [torch.ones_like(s, dtype=torch.bool) for s in scores]
    flat = torch.cat([s.detach().flatten().float() for s in scores])
    each = torch.cat([(c.flatten().float() if torch.is_tensor(c) else torch.full((s.numel(),), float(c)))
                      for s, c in zip(scores, costs)])
    if float(each.sum()) < remove:
        raise RepasError(f"the budget asks to drop {remove:.4g} of cost, more than all the prunable weights hold "
                         f"({float(each.sum()):.4g}): raise the target")
    order = torch.argsort(flat, stable=True)
    count = int(torch.searchsorted(torch.cumsum(each[order].double(), 0), remove)) + 1
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[order[:count]] = False
    return [k.view_as(s) for k, s in zip(keep.split([s.numel() for s in scores]), scores)]


def to_remove(model: nn.Module, budget: Budget, target: float | None = None) -> float:
    """The cost the zeros must save for the dense ``model`` to meet ``target`` (default the
    budget's)."""
    return float(budget.cost(model.spec.widths)) - (budget.target if target is None else target)


class KeepZeros:
    """A fine-tune term: the fused conv weights that are zero when it starts (the pruned
    ones) are set back to zero after every optimizer step."""

    searches = False  # the fine-tune keeps its EMA net; an average of zeros stays zero

    def __init__(self, model: nn.Module) -> None:
        self.convs = block_convs(model)
        self.masks = [(c.weight != 0).detach().clone() for c in self.convs]

    def penalty(self) -> torch.Tensor:
        return torch.zeros(())

    @torch.no_grad()
    def after_step(self, update: int) -> None:
        for conv, mask in zip(self.convs, self.masks):
            conv.weight.mul_(mask.to(conv.weight))

    def metrics(self) -> dict[str, float]:
        kept = sum(float(m.sum()) for m in self.masks)
        return {"weight_density": kept / sum(m.numel() for m in self.masks)}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


__all__ = ["ACCURACY_ONLY", "KeepZeros", "block_convs", "density", "masks_by_cost", "one_conv_form", "sparse_cost",
           "to_remove", "weight_costs"]
