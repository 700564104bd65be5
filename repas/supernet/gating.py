"""Reading and writing a supernet's gates as masks: which channels are on, their ranking,
and masks written back into frozen gates (how every pruning method hands over its choice)."""

from __future__ import annotations

import copy

import torch

from repas.supernet.net import RepNet

Masks = list[torch.Tensor]


def gate_masks(model: RepNet) -> Masks:
    """Each layer's kept channels as a bool tensor (all kept where a layer has no gate)."""
    return [g.mask().clone() if g is not None else torch.ones(lay.out_channels, dtype=torch.bool)
            for g, lay in zip(model.gate_modules(), model.spec.layers)]


def gate_widths(model: RepNet) -> list[int]:
    """Each layer's width as its gates stand (the full width where a layer has no gate)."""
    return [int(m.sum()) for m in gate_masks(model)]


def gated_channels(model: RepNet) -> int:
    """How many channels have a gate (a fixed layer's have none)."""
    return sum(lay.out_channels for lay, g in zip(model.spec.layers, model.gate_modules()) if g is not None)


def gate_scores(model: RepNet) -> list[torch.Tensor]:
    """Continuous gate weights (the channel ranking); +inf where a layer has no gate."""
    return [g.weight.detach().clone() if g is not None else torch.full((lay.out_channels,), float("inf"))
            for g, lay in zip(model.gate_modules(), model.spec.layers)]


def apply_masks(model: RepNet, masks: Masks, scores: list[torch.Tensor]) -> None:
    """Write masks into the (frozen) gates so that extraction reads them: kept channels get
    weights in [1, 2), pruned ones in [0, 0.4], ordered by ``scores`` within each layer, so
    a later re-fit ranks channels as the method did."""
    with torch.no_grad():
        for g, m, s in zip(model.gate_modules(), masks, scores):
            if g is None:
                continue
            rank = torch.empty(len(s))
            rank[torch.argsort(s)] = torch.arange(len(s), dtype=torch.float32) / len(s)
            g.weight.copy_(torch.where(m, 1.0 + rank, 0.4 * rank))
            g.freeze()


def gated_copy(model: RepNet, masks: Masks) -> RepNet:
    """A copy of the supernet whose gates are frozen at ``masks`` (for equality checks)."""
    out = copy.deepcopy(model)
    for g, m in zip(out.gate_modules(), masks):
        if g is not None:
            with torch.no_grad():
                g.weight.copy_(m.to(g.weight.dtype))
            g.freeze()
    return out


def was_searched(model: RepNet) -> bool:
    """Whether any gate moved from its initial all-on 1.0: a net that was only trained
    densely has nothing for extraction to read."""
    return any(g is not None and not bool((g.weight.detach() == 1.0).all()) for g in model.gate_modules())
