"""Branches of a multi-branch block; each knows its equivalent k x k kernel and bias.

Every branch maps ``in_channels`` to ``out_channels`` at the block's stride, groups and
dilation, and offers:

- ``equivalent_kernel_bias(size)``: the (kernel, bias) of one ``size`` x ``size`` conv
  (same stride, groups, dilation) that equals the branch in eval mode;
- ``load_sliced(src, out_idx, in_idx)``: copy the weights of a wider branch of the same
  kind, keeping output channels ``out_idx`` and input channels ``in_idx`` (extraction).

Where a 1x1 conv with a bias feeds a k x k operation, the intermediate map is padded with
that bias instead of zeros (as DBB and ECB do), so the composition is exactly one conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from repas.reparam.fusion import fuse_conv_bn, identity_kernel, pad_kernel


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _check_groups(in_channels: int, out_channels: int, groups: int) -> None:
    _require(in_channels % groups == 0 and out_channels % groups == 0,
             f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")


def copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    """Copy the channels ``idx`` of ``src`` (affine parameters and running statistics)."""
    with torch.no_grad():
        dst.weight.copy_(src.weight[idx])
        dst.bias.copy_(src.bias[idx])
        dst.running_mean.copy_(src.running_mean[idx])
        dst.running_var.copy_(src.running_var[idx])
        dst.num_batches_tracked.copy_(src.num_batches_tracked)


def _slice_conv(dst: nn.Conv2d, src: nn.Conv2d, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> None:
    _require(src.groups == 1, "extraction slices ungrouped convs only (groups=1)")
    w = src.weight
    w = w[out_idx] if out_idx is not None else w
    w = w[:, in_idx] if in_idx is not None else w
    with torch.no_grad():
        dst.weight.copy_(w)
        if src.bias is not None:
            dst.bias.copy_(src.bias[out_idx] if out_idx is not None else src.bias)


def scaled_conv(conv: nn.Conv2d, x: torch.Tensor, in_scale: torch.Tensor | None) -> torch.Tensor:
    """``conv(x * in_scale)`` with the per-input-channel scale folded into the weights.

    A supernet's gates scale the channels a layer reads: on the (small) weights, the
    forward and backward passes cost nothing extra, where scaling the (large) activations
    would cost three passes over them. Same values and gradients."""
    if in_scale is None:
        return conv(x)
    if conv.groups != 1:
        return conv(x * in_scale.view(1, -1, 1, 1))
    return F.conv2d(x, conv.weight * in_scale.view(1, -1, 1, 1), conv.bias, conv.stride, conv.padding,
                    conv.dilation)


def compose_1x1_kxk(k1: torch.Tensor, b1: torch.Tensor, k2: torch.Tensor, b2: torch.Tensor,
                    groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The conv equal to a 1x1 conv (k1, b1) followed by a k x k conv (k2, b2) whose input is
    padded with b1; both convs have ``groups`` groups."""
    out2, mid_g = k2.shape[:2]
    mid, in_g = k1.shape[:2]
    kernels = []
    for g in range(groups):
        k1g = k1[g * (mid // groups):(g + 1) * (mid // groups), :, 0, 0]  # (mid_g, in_g)
        k2g = k2[g * (out2 // groups):(g + 1) * (out2 // groups)]  # (out_g, mid_g, k, k)
        kernels.append(torch.einsum("omhw,mi->oihw", k2g, k1g))
    bias = b2 + (k2 * b1.view(groups, mid // groups).repeat_interleave(out2 // groups, 0)
                 .view(out2, mid_g, 1, 1)).sum(dim=(1, 2, 3))
    return torch.cat(kernels, 0), bias


class ConvBN(nn.Module):
    """A ``kh`` x ``kw`` conv followed by BatchNorm (or, with ``bn=False``, a conv with a
    bias), centred 'same' padding. With ``kernel=(1, k)`` or ``(k, 1)`` it is ACNet's
    horizontal / vertical branch.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int | tuple[int, int], stride: int = 1,
                 groups: int = 1, dilation: int = 1, bn: bool = True) -> None:
        super().__init__()
        _check_groups(in_channels, out_channels, groups)
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        _require(kh % 2 == 1 and kw % 2 == 1, f"kernel {kh}x{kw} must have odd sides")
        padding = (dilation * (kh // 2), dilation * (kw // 2))
        self.conv = nn.Conv2d(in_channels, out_channels, (kh, kw), stride, padding, dilation, groups, bias=not bn)
        self.bn = nn.BatchNorm2d(out_channels) if bn else None

    def forward(self, x: torch.Tensor, in_scale: torch.Tensor | None = None) -> torch.Tensor:
        y = scaled_conv(self.conv, x, in_scale)
        return self.bn(y) if self.bn is not None else y

    def equivalent_kernel_bias(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bn is not None:
            kernel, bias = fuse_conv_bn(self.conv.weight, self.bn)
        else:
            kernel, bias = self.conv.weight, self.conv.bias
        kh, kw = kernel.shape[-2:]
        _require(kh <= size and kw <= size, f"a {kh}x{kw} branch does not fit a {size}x{size} block")
        return F.pad(kernel, [(size - kw) // 2] * 2 + [(size - kh) // 2] * 2), bias

    def load_sliced(self, src: ConvBN, out_idx: torch.Tensor, in_idx: torch.Tensor) -> None:
        _slice_conv(self.conv, src.conv, out_idx, in_idx)
        if self.bn is not None:
            copy_bn(self.bn, src.bn, out_idx)


class ParallelConvBN(nn.Module):
    """N parallel k x k conv+BN (MobileOne-style over-parameterization), summed."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
                 dilation: int = 1, copies: int = 2) -> None:
        super().__init__()
        _require(copies >= 1, f"a parallel branch needs at least one copy, got {copies}")
        self.convs = nn.ModuleList(ConvBN(in_channels, out_channels, kernel, stride, groups, dilation)
                                   for _ in range(copies))

    def forward(self, x: torch.Tensor, in_scale: torch.Tensor | None = None) -> torch.Tensor:
        return sum(c(x, in_scale) for c in self.convs)

    def equivalent_kernel_bias(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [c.equivalent_kernel_bias(size) for c in self.convs]
        return sum(k for k, _ in parts), sum(b for _, b in parts)

    def load_sliced(self, src: ParallelConvBN, out_idx: torch.Tensor, in_idx: torch.Tensor) -> None:
        for dst, s in zip(self.convs, src.convs):
            dst.load_sliced(s, out_idx, in_idx)


class IdentityBN(nn.Module):
    """The input itself, through BatchNorm (RepVGG) or plain (``bn=False``).

    After extraction the block's input and output channels differ, so output channel j
    reads input channel ``index_map[j]``, or zero where that channel was pruned (then BN
    still adds its constant ``beta - mean * gamma / std``, exactly as in the supernet).
    """

    def __init__(self, out_channels: int, in_channels: int | None = None, index_map: list[int] | None = None,
                 groups: int = 1, bn: bool = True) -> None:
        super().__init__()
        self.in_channels = out_channels if in_channels is None else in_channels
        self.groups = groups
        self.bn = nn.BatchNorm2d(out_channels) if bn else None
        if index_map is None:
            _require(self.in_channels == out_channels, "an identity branch needs in == out channels")
            index_map = list(range(out_channels))
        _require(groups == 1 or index_map == list(range(out_channels)),
                 "an identity branch with an index map needs groups=1")
        self.register_buffer("index_map", torch.tensor(index_map, dtype=torch.long), persistent=False)
        self.plain = index_map == list(range(self.in_channels)) and self.in_channels == out_channels
        # Index into the input with one zero channel appended: -1 reads the zero channel.
        gather = [j if j >= 0 else self.in_channels for j in index_map]
        self.register_buffer("gather", torch.tensor(gather, dtype=torch.long), persistent=False)

    def _gathered(self, x: torch.Tensor) -> torch.Tensor:
        """Output channel j's input: channel ``index_map[j]`` of ``x``, or zeros."""
        if self.plain:
            return x
        n, _, h, w = x.shape
        return torch.cat([x, x.new_zeros(n, 1, h, w)], dim=1).index_select(1, self.gather)

    def forward(self, x: torch.Tensor, in_scale: torch.Tensor | None = None) -> torch.Tensor:
        if in_scale is None:
            return self.bn(self._gathered(x)) if self.bn is not None else self._gathered(x)
        if self.bn is None or not self.bn.training or not in_scale.requires_grad:  # (BN frozen: no issue)
            y = self._gathered(x * in_scale.view(1, -1, 1, 1))
            return self.bn(y) if self.bn is not None else y
        # Training a gate: BN(x * s) is computed with s detached (the same values and running
        # statistics), and the gate's gradient comes from (s - s.detach()) * (BN(x) - beta),
        # zero in value. Without this, an off gate (s = 0) feeds BN a zero-variance channel,
        # whose backward multiplies the gate's gradient by gamma / sqrt(eps) (about 300x).
        # With it, the gate hears what the channel's identity path adds when on: gamma * x_hat.
        hard = in_scale.detach()
        y = self.bn(self._gathered(x * hard.view(1, -1, 1, 1)))
        on_output = F.batch_norm(self._gathered(x), None, None, self.bn.weight, None, training=True,
                                 eps=self.bn.eps)
        change = self._gathered((in_scale - hard).view(1, -1, 1, 1))
        return y + change * on_output

    def equivalent_kernel_bias(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        per_group = self.in_channels // self.groups
        index_map = self.index_map % per_group if self.groups > 1 else self.index_map
        kernel = identity_kernel(index_map, per_group, size)
        if self.bn is None:
            return kernel, kernel.new_zeros(len(self.index_map))
        return fuse_conv_bn(kernel.to(self.bn.weight), self.bn)

    def load_sliced(self, src: IdentityBN, out_idx: torch.Tensor, in_idx: torch.Tensor) -> None:
        if self.bn is not None:
            copy_bn(self.bn, src.bn, out_idx)


class BiasPad(nn.Module):
    """Zero-pads a map after subtracting ``bias`` and adds it back: padding with the bias."""

    def __init__(self, padding: int) -> None:
        super().__init__()
        self.padding = padding

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            return x
        b = bias.view(1, -1, 1, 1)
        return F.pad(x - b, [self.padding] * 4) + b


class Conv1x1KxK(nn.Module):
    """DBB's 1x1 conv+BN then k x k conv+BN; the k x k sees the 1x1's bias in its padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
                 dilation: int = 1, mid_channels: int | None = None) -> None:
        super().__init__()
        mid = self.mid_channels = mid_channels or in_channels
        _check_groups(in_channels, mid, groups)
        _check_groups(mid, out_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, mid, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.pad = BiasPad(dilation * (kernel // 2))
        self.conv2 = nn.Conv2d(mid, out_channels, kernel, stride, 0, dilation, groups, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.groups = groups

    def forward(self, x: torch.Tensor, in_scale: torch.Tensor | None = None) -> torch.Tensor:
        y = self.bn1(scaled_conv(self.conv1, x, in_scale))
        return self.bn2(self.conv2(self.pad(y, fuse_conv_bn(None, self.bn1)[1].detach())))

    def equivalent_kernel_bias(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        k1, b1 = fuse_conv_bn(self.conv1.weight, self.bn1)
        k2, b2 = fuse_conv_bn(self.conv2.weight, self.bn2)
        kernel, bias = compose_1x1_kxk(k1, b1, k2, b2, self.groups)
        return pad_kernel(kernel, size), bias

    def load_sliced(self, src: Conv1x1KxK, out_idx: torch.Tensor, in_idx: torch.Tensor) -> None:
        _slice_conv(self.conv1, src.conv1, None, in_idx)
        copy_bn(self.bn1, src.bn1, torch.arange(src.bn1.num_features))
        _slice_conv(self.conv2, src.conv2, out_idx, None)
        copy_bn(self.bn2, src.bn2, out_idx)


class Conv1x1AvgPool(nn.Module):
    """DBB's 1x1 conv+BN then k x k average pooling+BN (padded with the 1x1's bias)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
                 dilation: int = 1) -> None:
        super().__init__()
        _require(dilation == 1, "the 1x1-avgpool branch has no dilated form: use dilation=1 or another branch")
        _check_groups(in_channels, out_channels, groups)
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.pad = BiasPad(kernel // 2)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, in_scale: torch.Tensor | None = None) -> torch.Tensor:
        y = self.pad(self.bn1(scaled_conv(self.conv, x, in_scale)), fuse_conv_bn(None, self.bn1)[1].detach())
        return self.bn2(F.avg_pool2d(y, self.kernel, self.stride))

    def equivalent_kernel_bias(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        k1, b1 = fuse_conv_bn(self.conv.weight, self.bn1)
        s2, b2 = fuse_conv_bn(None, self.bn2)
        k = self.kernel
        kernel = (k1 * (s2 / (k * k)).view(-1, 1, 1, 1)).expand(-1, -1, k, k)
        return pad_kernel(kernel, size), b1 * s2 + b2

    def load_sliced(self, src: Conv1x1AvgPool, out_idx: torch.Tensor, in_idx: torch.Tensor) -> None:
        _slice_conv(self.conv, src.conv, out_idx, in_idx)
        copy_bn(self.bn1, src.bn1, out_idx)
        copy_bn(self.bn2, src.bn2, out_idx)


EDGE_FILTERS = {
    "sobel_x": [[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]],
    "sobel_y": [[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]],
    "laplacian": [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]],
}


class Conv1x1Edge(nn.Module):
    """ECB's 1x1 conv (with bias) then a fixed Sobel-x, Sobel-y or Laplacian depthwise 3x3
    filter with a learnable per-channel scale and bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
                 dilation: int = 1, filter: str = "sobel_x") -> None:
        super().__init__()
        _require(filter in EDGE_FILTERS, f"unknown edge filter {filter!r}; known: {sorted(EDGE_FILTERS)}")
        _require(groups == 1 and dilation == 1, "ECB edge branches need groups=1 and dilation=1")
        _require(kernel >= 3, f"an edge branch needs a block kernel of at least 3, got {kernel}")
        self.stride = stride
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.scale = nn.Parameter(torch.randn(out_channels) * 1e-3)
        self.bias = nn.Parameter(torch.randn(out_channels) * 1e-3)
        self.register_buffer("mask", torch.tensor(EDGE_FILTERS[filter]).expand(out_channels, 1, 3, 3).clone(),
                             persistent=False)
        self.pad = BiasPad(1)

    def forward(self, x: torch.Tensor, in_scale: torch.Tensor | None = None) -> torch.Tensor:
        y = self.pad(scaled_conv(self.conv, x, in_scale), self.conv.bias)
        return F.conv2d(y, self.scale.view(-1, 1, 1, 1) * self.mask, self.bias, self.stride,
                        groups=self.mask.shape[0])

    def equivalent_kernel_bias(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        k2 = self.scale.view(-1, 1, 1, 1) * self.mask
        kernel = k2 * self.conv.weight  # depthwise k2 over a 1x1: (out, 1, 3, 3) * (out, in, 1, 1)
        bias = self.bias + k2.sum(dim=(1, 2, 3)) * self.conv.bias
        return pad_kernel(kernel, size), bias

    def load_sliced(self, src: Conv1x1Edge, out_idx: torch.Tensor, in_idx: torch.Tensor) -> None:
        _slice_conv(self.conv, src.conv, out_idx, in_idx)
        with torch.no_grad():
            self.scale.copy_(src.scale[out_idx])
            self.bias.copy_(src.bias[out_idx])


class ExpandSqueeze(nn.Module):
    """ECB's 1x1 expand (to 2 x out channels by default) then k x k squeeze, both with bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
                 dilation: int = 1, mid_channels: int | None = None) -> None:
        super().__init__()
        _require(groups == 1, "the expand-squeeze branch needs groups=1")
        mid = self.mid_channels = mid_channels or 2 * out_channels
        self.conv1 = nn.Conv2d(in_channels, mid, 1)
        self.pad = BiasPad(dilation * (kernel // 2))
        self.conv2 = nn.Conv2d(mid, out_channels, kernel, stride, 0, dilation)

    def forward(self, x: torch.Tensor, in_scale: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv2(self.pad(scaled_conv(self.conv1, x, in_scale), self.conv1.bias))

    def equivalent_kernel_bias(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        kernel, bias = compose_1x1_kxk(self.conv1.weight, self.conv1.bias, self.conv2.weight, self.conv2.bias)
        return pad_kernel(kernel, size), bias

    def load_sliced(self, src: ExpandSqueeze, out_idx: torch.Tensor, in_idx: torch.Tensor) -> None:
        _slice_conv(self.conv1, src.conv1, None, in_idx)
        _slice_conv(self.conv2, src.conv2, out_idx, None)
