"""What a pruning method needs of the model it prunes, for both kinds repas searches: a
``RepNet`` supernet built from an ``ArchSpec``, and a ``GatedModel`` wrapping a user's own
CNN (``repas.graph``). Cost function, filter norms and extraction, one function each."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from repas.graph import GatedModel
from repas.search.cost import CostFn, analytic_cost
from repas.search.extract import extract_subnet
from repas.search.importance import l1_norms


def cost_function(model: nn.Module, metric: str) -> CostFn:
    """MACs or params of ``model`` as a function of its layers' (or groups') widths."""
    if isinstance(model, GatedModel):
        return model.cost_fn(metric)
    return analytic_cost(model.spec, metric)


def filter_norms(model: nn.Module) -> list[torch.Tensor]:
    """L1 norm of every prunable output channel's filter, one tensor per layer (or group)."""
    return model.filter_norms() if isinstance(model, GatedModel) else l1_norms(model)


def extract_model(model: nn.Module, masks: list[torch.Tensor] | None = None) -> nn.Module:
    """The physically smaller model equal to ``model`` gated by ``masks`` (default: its gates)."""
    return model.extract(masks) if isinstance(model, GatedModel) else extract_subnet(model, masks)


@contextmanager
def pruned_view(model: nn.Module, masks: list[torch.Tensor]) -> Iterator[nn.Module]:
    """A module that computes what ``model`` pruned by ``masks`` computes, free to be
    recalibrated or trained briefly: a supernet's extracted subnet (a new, smaller net), or
    for a user model the model itself with its gates set to ``masks``, its gates and
    BatchNorm state put back on exit (extracting a user model retraces its graph: slow)."""
    if not isinstance(model, GatedModel):
        yield extract_subnet(model, masks)
        return
    gates = [g.weight.detach().clone() for g in model.gates]
    frozen = [g.frozen for g in model.gates]
    state = {k: v.clone() for k, v in model.model.state_dict().items()}
    try:
        with torch.no_grad():
            for g, m in zip(model.gates, masks):
                g.weight.copy_(m.to(g.weight))
        model.freeze_gates()
        yield model
    finally:
        model.model.load_state_dict(state)
        with torch.no_grad():
            for g, w, f in zip(model.gates, gates, frozen):
                g.weight.copy_(w)
                g.freeze(f)
