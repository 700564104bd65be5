"""RepBlock: parallel branches summed, then an activation; fuses into one Conv2d."""

from __future__ import annotations

import torch
from torch import nn

from repas.reparam.branches import ConvBN, IdentityBN

ACTIVATIONS = {"relu": nn.ReLU, "identity": nn.Identity}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class RepBlock(nn.Module):
    """A multi-branch conv block (training form) or its fused plain conv (deploy form).

    ``branches`` names the parallel paths: ``conv`` (k x k conv+BN), ``conv1x1`` (1x1
    conv+BN), ``identity`` (BN of the input). ``["fused"]`` builds the deploy form directly.
    ``reparameterize()`` switches a block to its deploy form in place and returns the
    fused conv; the name lets ``timm.utils.reparameterize_model`` fuse repas nets too.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1,
                 branches: list[str] | tuple[str, ...] = ("conv", "conv1x1", "identity"),
                 act: str = "relu", identity_map: list[int] | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel, self.stride = kernel, stride
        self.act = make_activation(act)
        self.branches = nn.ModuleDict()
        self.reparam_conv: nn.Conv2d | None = None
        if list(branches) == ["fused"]:
            self.reparam_conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2)
            return
        for name in branches:
            if name == "conv":
                self.branches[name] = ConvBN(in_channels, out_channels, kernel, stride)
            elif name == "conv1x1":
                self.branches[name] = ConvBN(in_channels, out_channels, 1, stride)
            elif name == "identity":
                if stride != 1:
                    raise ValueError("an identity branch needs stride 1")
                self.branches[name] = IdentityBN(out_channels, in_channels, identity_map)
            else:
                raise ValueError(f"unknown branch {name!r}")

    @property
    def fused(self) -> bool:
        return self.reparam_conv is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.act(self.reparam_conv(x))
        branches = iter(self.branches.values())
        out = next(branches)(x)
        for branch in branches:
            out = out + branch(x)
        return self.act(out)

    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kernel and bias of the one conv that equals the sum of the branches (eval mode)."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        parts = [b.equivalent_kernel_bias(self.kernel) for b in self.branches.values()]
        return sum(k for k, _ in parts), sum(b for _, b in parts)

    @torch.no_grad()
    def reparameterize(self) -> nn.Conv2d:
        """Switch to the deploy form in place; return the fused conv."""
        if self.reparam_conv is None:
            kernel, bias = self.equivalent_kernel_bias()
            conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel, self.stride,
                             self.kernel // 2).to(kernel)
            conv.weight.copy_(kernel)
            conv.bias.copy_(bias)
            self.reparam_conv = conv
            self.branches = nn.ModuleDict()
        return self.reparam_conv
