"""Fusing a user model for inference: timm's own reparameterisation of RepVGG / MobileOne-style
blocks (each block's branches become one conv), then every conv + BatchNorm pair folded
into one conv (``torch.fx``'s ``fuse``). Both are equalities up to float rounding."""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

log = logging.getLogger("repas.graph")


def fuse_user_model(model: nn.Module) -> nn.Module:
    """A fused copy of ``model`` (eval mode); the model itself is left as it is. Where
    ``torch.fx`` cannot trace the model, its BatchNorms stay (onnxruntime folds them at load)."""
    model = copy.deepcopy(model).eval()
    try:
        from timm.utils.model import reparameterize_model
    except ImportError:
        pass
    else:
        model = reparameterize_model(model)
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model)
    except Exception as e:  # noqa: BLE001 (whatever stops fx's trace, the model still runs unfolded)
        log.warning(f"{type(model).__name__}: conv + BatchNorm not folded (torch.fx cannot trace it: "
                    f"{type(e).__name__}); the exported graph keeps them")
        return model


@torch.no_grad()
def max_relative_difference(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """max |a(x) - b(x)| / max |a(x)|."""
    ya, yb = a.eval()(x), b.eval()(x)
    return float((ya - yb).abs().max() / ya.abs().max().clamp_min(1e-12))
