"""The trainer's optimizers: timm's for the weights (decay on conv and linear weights only)
and plain SGD for the gates."""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import create_optimizer_v2


def _gate_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return model.gate_parameters() if hasattr(model, "gate_parameters") else []


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Conv/linear weights decay; biases and BN do not. Gates are not included."""
    gate_ids = {id(p) for p in _gate_parameters(model)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad or id(p) in gate_ids:
            continue
        (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def gate_optimizer(model: torch.nn.Module, gate_lr: float) -> torch.optim.Optimizer | None:
    """Gates always learn by SGD with momentum, whatever optimizer the weights use: an
    adaptive optimizer (Adam) would move every gate of a layer by the same step under the
    budget's identical per-channel gradient and switch a whole layer off at once."""
    gates = [p for p in _gate_parameters(model) if p.requires_grad]
    return create_optimizer_v2(gates, opt="sgd", lr=gate_lr, weight_decay=0.0, momentum=0.9) if gates else None
