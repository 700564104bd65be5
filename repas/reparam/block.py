"""RepBlock: parallel branches summed, then an activation; fuses into one Conv2d."""

from __future__ import annotations

import torch
from torch import nn

from repas.reparam.branches import (
    EDGE_FILTERS,
    Conv1x1AvgPool,
    Conv1x1Edge,
    Conv1x1KxK,
    ConvBN,
    ExpandSqueeze,
    IdentityBN,
    ParallelConvBN,
    copy_bn,
    scaled_conv,
)
from repas.reparam.fusion import fuse_conv_bn
from repas.spec import POST_BN, parse_branch

ACTIVATIONS = {"relu": nn.ReLU, "prelu": nn.PReLU, "identity": nn.Identity}


def make_activation(name: str, channels: int) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return nn.PReLU(channels) if name == "prelu" else ACTIVATIONS[name]()


def make_branch(name: str, in_channels: int, out_channels: int, kernel: int, stride: int, groups: int,
                dilation: int, identity_map: list[int] | None = None, mid_channels: int | None = None) -> nn.Module:
    """The branch module a branch name stands for (names: ``repas.spec.parse_branch``)."""
    kind, arg = parse_branch(name, kernel)
    common = dict(stride=stride, groups=groups, dilation=dilation)
    if kind == "conv":
        kh, kw, bn = arg
        return ConvBN(in_channels, out_channels, (kh, kw), bn=bn, **common)
    if kind == "parallel":
        return ParallelConvBN(in_channels, out_channels, kernel, copies=arg, **common)
    if kind == "identity":
        if stride != 1:
            raise ValueError("an identity branch needs stride 1")
        return IdentityBN(out_channels, in_channels, identity_map, groups, bn=arg)
    if kind == "conv1x1_kxk":
        return Conv1x1KxK(in_channels, out_channels, kernel, mid_channels=mid_channels, **common)
    if kind == "conv1x1_avg":
        return Conv1x1AvgPool(in_channels, out_channels, kernel, **common)
    if kind == "edge":
        return Conv1x1Edge(in_channels, out_channels, kernel, filter=arg, **common)
    if kind == "expand_squeeze":
        return ExpandSqueeze(in_channels, out_channels, kernel, mid_channels=mid_channels, **common)
    raise ValueError(f"unknown branch {name!r}")


class RepBlock(nn.Module):
    """A multi-branch conv block (training form) or its fused plain conv (deploy form).

    ``branches`` names the parallel paths, summed before the activation: ``conv`` (k x k
    conv+BN), ``conv1x1``, ``convKxK``, ``conv1xk`` / ``convkx1`` (ACNet), any of these with
    ``_plain`` (a conv with a bias, no BN, as in ECB), ``identity`` /
    ``identity_plain``, ``conv1x1_kxk`` / ``conv1x1_avg`` (DBB), ``sobel_x`` / ``sobel_y`` /
    ``laplacian`` / ``expand_squeeze`` (ECB), ``conv_xN`` (N parallel k x k, MobileOne).
    ``post_bn`` is not a branch but a BatchNorm after the sum (QARepVGG:
    ``[conv, conv1x1_plain, identity_plain, post_bn]``), folded into the fused conv as well.
    ``["fused"]`` builds the deploy form directly. ``reparameterize()`` switches a block to
    its deploy form in place and returns the fused conv; the name lets
    ``timm.utils.reparameterize_model`` fuse repas nets too.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1,
                 branches: list[str] | tuple[str, ...] = ("conv", "conv1x1", "identity"),
                 act: str = "relu", identity_map: list[int] | None = None, groups: int = 1, dilation: int = 1,
                 mid_channels: dict[str, int] | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel, self.stride, self.groups, self.dilation = kernel, stride, groups, dilation
        self.act = make_activation(act, out_channels)
        self.branches = nn.ModuleDict()
        self.reparam_conv: nn.Conv2d | None = None
        self.post_bn: nn.BatchNorm2d | None = nn.BatchNorm2d(out_channels) if POST_BN in branches else None
        if list(branches) == ["fused"]:
            self.reparam_conv = self._plain_conv()
            return
        if POST_BN in branches and (len(branches) < 2 or list(branches).count(POST_BN) > 1):
            raise ValueError(f"{POST_BN} (a BatchNorm after the sum) comes once, beside at least one branch")
        mids = mid_channels or {}
        for name in branches:
            if name == POST_BN:
                continue
            self.branches[name] = make_branch(name, in_channels, out_channels, kernel, stride, groups, dilation,
                                              identity_map, mids.get(name))

    def _plain_conv(self) -> nn.Conv2d:
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel, self.stride,
                         self.dilation * (self.kernel // 2), self.dilation, self.groups)

    @property
    def fused(self) -> bool:
        return self.reparam_conv is not None

    def forward(self, x: torch.Tensor, in_scale: torch.Tensor | None = None) -> torch.Tensor:
        """``in_scale`` (per input channel; a supernet passes the previous layer's gates)
        gives the block of ``x * in_scale``, folded into the branches' first weights."""
        if self.reparam_conv is not None:
            return self.act(scaled_conv(self.reparam_conv, x, in_scale))
        branches = iter(self.branches.values())
        out = next(branches)(x, in_scale)
        for branch in branches:
            out = out + branch(x, in_scale)
        if self.post_bn is not None:
            out = self.post_bn(out)
        return self.act(out)

    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kernel and bias of the one conv that equals the sum of the branches (eval mode)."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        parts = [b.equivalent_kernel_bias(self.kernel) for b in self.branches.values()]
        kernel, bias = sum(k for k, _ in parts), sum(b for _, b in parts)
        if self.post_bn is not None:  # bn(conv(x) + bias) = conv'(x) + bias'
            scale, shift = fuse_conv_bn(None, self.post_bn)
            kernel, bias = kernel * scale.reshape(-1, 1, 1, 1), bias * scale + shift
        return kernel, bias

    def mid_channels(self) -> dict[str, int]:
        """Intermediate widths of two-stage branches (kept as they are by extraction)."""
        return {name: b.mid_channels for name, b in self.branches.items() if hasattr(b, "mid_channels")}

    @torch.no_grad()
    def load_sliced(self, src: RepBlock, out_idx: torch.Tensor, in_idx: torch.Tensor) -> None:
        """Copy a wider block's weights of the same kind, keeping output channels ``out_idx``
        and input channels ``in_idx`` (extraction)."""
        for name, branch in src.branches.items():
            self.branches[name].load_sliced(branch, out_idx, in_idx)
        if src.post_bn is not None:
            copy_bn(self.post_bn, src.post_bn, out_idx)
        if hasattr(src.act, "weight"):  # PReLU: one slope per channel
            self.act.weight.copy_(src.act.weight[out_idx])
        if src.reparam_conv is not None:
            self.reparam_conv.weight.copy_(src.reparam_conv.weight[out_idx][:, in_idx])
            self.reparam_conv.bias.copy_(src.reparam_conv.bias[out_idx])

    @torch.no_grad()
    def reparameterize(self) -> nn.Conv2d:
        """Switch to the deploy form in place; return the fused conv."""
        if self.reparam_conv is None:
            kernel, bias = self.equivalent_kernel_bias()
            conv = self._plain_conv().to(kernel)
            conv.weight.copy_(kernel)
            conv.bias.copy_(bias)
            self.reparam_conv = conv
            self.branches = nn.ModuleDict()
            self.post_bn = None
        return self.reparam_conv


__all__ = ["ACTIVATIONS", "EDGE_FILTERS", "RepBlock", "make_activation", "make_branch"]
