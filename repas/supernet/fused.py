"""Fusing a whole network: every block becomes one conv, and a RepNet's spec says so."""

from __future__ import annotations

import torch
from torch import nn

from repas.reparam import reparameterize_blocks
from repas.spec import ArchSpec
from repas.supernet.net import RepNet


def fused_spec(spec: ArchSpec) -> ArchSpec:
    """The deploy-form spec: every layer a single ``fused`` conv with bias, no gates."""
    d = spec.to_dict()
    for lay in d["layers"]:
        lay["branches"] = ["fused"]
        lay["identity_map"] = None
        lay["mid_channels"] = None
        lay["gated"] = False
    if not d["name"].endswith("-fused"):
        d["name"] += "-fused"
    return ArchSpec.from_dict(d)


@torch.no_grad()
def fuse_repnet(model: RepNet, inplace: bool = False) -> RepNet:
    """The plain conv/act net equal to ``model`` in eval mode, rebuildable from its spec.

    Gates fold into the fused convs: with b in {0, 1} and act(0) = 0 (ReLU, PReLU,
    identity), ``act(conv(x)) * b == act((b * W) x + b * bias)``; a switched-off channel
    becomes an all-zero row, which extraction then removes.
    """
    out = reparameterize_blocks(model, inplace=inplace)
    for i, gate in enumerate(out.gate_modules()):
        if gate is not None:
            b = gate.mask().to(gate.weight.dtype)
            conv = out.blocks[i].reparam_conv
            conv.weight.mul_(b.view(-1, 1, 1, 1))
            conv.bias.mul_(b)
            out.gates[i] = nn.Identity()
    out.spec = fused_spec(model.spec)
    return out


def fuse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The deploy form of ``model`` in eval mode, the one name a user needs: a RepNet
    becomes its plain conv/act net (``fuse_repnet``: gates folded in, a spec that says so);
    any other module has each of its blocks' branches fused (``reparameterize_blocks``).
    A user's own CNN (``repas.graph``) has its conv + BatchNorm pairs folded by
    ``repas.graph.fuse_user_model``."""
    if isinstance(model, RepNet):
        return fuse_repnet(model, inplace=inplace)
    return reparameterize_blocks(model, inplace=inplace)
