"""The algebra of structural reparameterization: kernels and biases of equivalent convs.

Every function here is an equality: a branch's output equals ``conv2d(x, kernel) + bias``
with the returned kernel and bias, so fused nets can be tested against multi-branch nets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fuse_conv_bn(kernel: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the conv ``kernel`` that feeds it.

    Returns ``(kernel * gamma / std, beta - mean * gamma / std)``. The math uses the BN's
    running statistics, which is what BN computes in eval mode.
    """
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std if bn.affine else 1.0 / std
    shift = bn.bias - bn.running_mean * scale if bn.affine else -bn.running_mean * scale
    if kernel is None:
        return scale, shift
    return kernel * scale.reshape(-1, 1, 1, 1), shift


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a square kernel symmetrically to ``size`` x ``size``."""
    k = kernel.shape[-1]
    if k > size or (size - k) % 2:
        raise ValueError(f"cannot centre a {k}x{k} kernel in {size}x{size}")
    p = (size - k) // 2
    return F.pad(kernel, [p, p, p, p])


def identity_kernel(index_map: torch.Tensor, in_channels: int, size: int) -> torch.Tensor:
    """A ``size`` x ``size`` kernel with a centred 1 at ``[j, index_map[j]]`` (none where -1)."""
    out = index_map.numel()
    kernel = torch.zeros(out, in_channels, size, size, device=index_map.device)
    rows = torch.nonzero(index_map >= 0).flatten()
    kernel[rows, index_map[rows], size // 2, size // 2] = 1.0
    return kernel
