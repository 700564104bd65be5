"""Branches of a multi-branch block; each knows its equivalent k x k kernel and bias."""

from __future__ import annotations

import torch
from torch import nn

from repas.reparam.fusion import fuse_conv_bn, identity_kernel, pad_kernel


class ConvBN(nn.Module):
    """A bias-free ``kernel`` x ``kernel`` conv followed by BatchNorm, 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def equivalent_kernel_bias(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        kernel, bias = fuse_conv_bn(self.conv.weight, self.bn)
        return pad_kernel(kernel, size), bias


class IdentityBN(nn.Module):
    """BatchNorm of the input itself (RepVGG's identity branch).

    After extraction the block's input and output channels differ, so output channel j
    reads input channel ``index_map[j]``, or zero where that channel was pruned (then BN
    still adds its constant ``beta - mean * gamma / std``, exactly as in the supernet).
    """

    def __init__(self, out_channels: int, in_channels: int | None = None,
                 index_map: list[int] | None = None) -> None:
        super().__init__()
        self.in_channels = out_channels if in_channels is None else in_channels
        self.bn = nn.BatchNorm2d(out_channels)
        if index_map is None:
            if self.in_channels != out_channels:
                raise ValueError("an identity branch without index_map needs in == out channels")
            index_map = list(range(out_channels))
        self.register_buffer("index_map", torch.tensor(index_map, dtype=torch.long), persistent=False)
        self.plain = index_map == list(range(self.in_channels)) and self.in_channels == out_channels
        # Index into the input with one zero channel appended: -1 reads the zero channel.
        gather = [j if j >= 0 else self.in_channels for j in index_map]
        self.register_buffer("gather", torch.tensor(gather, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.plain:
            n, _, h, w = x.shape
            x = torch.cat([x, x.new_zeros(n, 1, h, w)], dim=1).index_select(1, self.gather)
        return self.bn(x)

    def equivalent_kernel_bias(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        kernel = identity_kernel(self.index_map, self.in_channels, size).to(self.bn.weight)
        return fuse_conv_bn(kernel, self.bn)
