"""Fusible multi-branch blocks and the algebra that fuses them (pure torch.nn)."""

from __future__ import annotations

import copy

from torch import nn

from repas.reparam.block import RepBlock
from repas.reparam.branches import ConvBN, IdentityBN
from repas.reparam.fusion import fuse_conv_bn, identity_kernel, pad_kernel

__all__ = ["ConvBN", "IdentityBN", "RepBlock", "reparameterize_blocks", "fuse_conv_bn", "identity_kernel", "pad_kernel"]


def reparameterize_blocks(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Reparameterize every block of ``model`` that has ``reparameterize()``; eval mode."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    for module in list(model.modules()):
        if isinstance(module, RepBlock):
            module.reparameterize()
    return model
