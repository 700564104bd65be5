"""Interop with timm: load the weights of timm's RepVGG models into repas networks.

timm's ``RepVggBlock`` has the same three branches as repas's RepVGG-style RepBlock
(``conv_kxk``, ``conv_1x1``, ``identity`` BN); its blocks run stem, then stage by stage,
which is repas's layer order. ``repvgg_a0`` / ``repvgg_a1`` / ``repvgg_b0`` match the
search spaces of the same names.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from repas.errors import RepasError
from repas.supernet.model_files import load_weights
from repas.supernet.net import RepNet, build
from repas.supernet.spaces import create_supernet_spec

_KEY = r"(stem|stages\.\d+\.\d+)\.(conv_kxk\.conv|conv_kxk\.bn|conv_1x1\.conv|conv_1x1\.bn|identity)\.(.+)"
_BRANCHES = {"conv_kxk.conv": "conv.conv", "conv_kxk.bn": "conv.bn", "conv_1x1.conv": "conv1x1.conv",
             "conv_1x1.bn": "conv1x1.bn", "identity": "identity.bn"}


def timm_repvgg_state_to_repas(state: dict[str, torch.Tensor], model: RepNet) -> dict[str, torch.Tensor]:
    """Rename a timm RepVGG state dict to the keys of ``model`` (gates stay all-on)."""
    prefixes: list[str] = []
    for key in state:
        m = re.match(r"(stem|stages\.\d+\.\d+)\.", key)
        if m and m.group(1) not in prefixes:
            prefixes.append(m.group(1))
    out = {k: v for k, v in model.state_dict().items() if k.startswith("gates.")}
    for key, value in state.items():
        if key.startswith("head.fc."):
            out["head." + key[len("head.fc."):]] = value
            continue
        m = re.match(_KEY, key)
        if not m:
            raise RepasError(f"timm key {key!r} has no repas counterpart: only plain RepVggBlock nets are supported")
        block = prefixes.index(m.group(1))
        out[f"blocks.{block}.branches.{_BRANCHES[m.group(2)]}.{m.group(3)}"] = value
    return out


def from_timm_repvgg(timm_model: nn.Module, space: str | None = None) -> RepNet:
    """A repas RepNet with the weights of a timm RepVGG model (e.g. ``timm.create_model('repvgg_a0')``)."""
    name = space or timm_model.pretrained_cfg.get("architecture", "").replace("_", "-")
    spec = create_supernet_spec(name, num_classes=timm_model.num_classes)
    model = build(spec)
    load_weights(model, timm_repvgg_state_to_repas(timm_model.state_dict(), model), f"timm {name}")
    return model.train(timm_model.training)
