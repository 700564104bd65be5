"""Fusing a whole network: every block becomes one conv, and a RepNet's spec says so."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from repas.reparam import reparameterize_blocks
from repas.reparam.block import make_branch
from repas.spec import ArchSpec
from repas.supernet.net import RepNet


def fused_spec(spec: ArchSpec, *, branches: tuple[str, ...] = ("fused",), keep_gates: bool = False) -> ArchSpec:
    """The deploy-form spec: every layer a single ``fused`` conv with bias, no gates (or
    the one-branch form ``branches=("conv",)``, with ``keep_gates`` each layer gated as it was)."""
    d = spec.to_dict()
    for lay in d["layers"]:
        lay["branches"] = list(branches)
        lay["identity_map"] = None
        lay["mid_channels"] = None
        lay["gated"] = lay["gated"] and keep_gates
    suffix = "-fused" if branches == ("fused",) else ""
    if suffix and not d["name"].endswith(suffix):
        d["name"] += suffix
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


@torch.no_grad()
def conv_bn_form(model: RepNet, inputs: torch.Tensor | None = None,
                 mix: Sequence[torch.Tensor | None] | None = None, *, inplace: bool = False) -> RepNet:
    """A copy of ``model`` with every block's branches summed into one conv + BatchNorm
    (its fused kernel, then a BN that is the identity plus the bias in eval mode), gates
    kept: equal to ``model`` in eval mode. The net that methods deciding on the fused
    weights prune and fine-tune (a zero of the conv stays a zero when the BN folds in), with
    BatchNorm still there to train with. Each BN's statistics are those of its conv's output
    on ``inputs``, so that training mode starts at about the same function. ``mix[i]``, an
    (out, out) matrix, is applied to block i's output before its activation and folds into
    its conv (ResRep's compactors). ``inplace``: ``model`` itself becomes that net."""
    out = (model if inplace else copy.deepcopy(model)).eval()
    for i, block in enumerate(out.blocks):
        kernel, bias = block.equivalent_kernel_bias()
        if mix is not None and mix[i] is not None:
            kernel, bias = torch.einsum("oc,cikl->oikl", mix[i], kernel), mix[i] @ bias
        branch = make_branch("conv", block.in_channels, block.out_channels, block.kernel, block.stride, block.groups,
                             block.dilation).to(kernel)
        branch.conv.weight.copy_(kernel)
        branch.bn.running_mean.zero_()
        branch.bn.running_var.fill_(1.0 - branch.bn.eps)
        branch.bn.weight.fill_(1.0)
        branch.bn.bias.copy_(bias)
        block.branches, block.post_bn, block.reparam_conv = nn.ModuleDict({"conv": branch}), None, None
    out.eval()  # the new branches too: their BN must not move while it is measured
    if inputs is not None:
        _measure_bn(out, inputs)
    out.spec = fused_spec(model.spec, branches=("conv",), keep_gates=True)
    return out


def _measure_bn(model: RepNet, inputs: torch.Tensor) -> None:
    """Set each one-branch block's BN to its conv output's statistics on ``inputs``
    (running mean m, variance v, then weight sqrt(v + eps) and bias m + bias: the same
    function in eval mode)."""
    stats: dict[nn.BatchNorm2d, torch.Tensor] = {}
    hooks = [b.branches["conv"].bn.register_forward_pre_hook(lambda bn, args: stats.__setitem__(bn, args[0]))
             for b in model.blocks]
    try:
        model(inputs)
    finally:
        for h in hooks:
            h.remove()
    for bn, y in stats.items():
        mean, var = y.mean(dim=(0, 2, 3)), y.var(dim=(0, 2, 3), unbiased=False)
        bias = bn.bias - bn.running_mean  # the BN's shift beyond the identity (running mean 0 so far)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_((var + bn.eps).sqrt())
        bn.bias.copy_(mean + bias)


def fuse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The deploy form of ``model`` in eval mode, the one name a user needs: a RepNet
    becomes its plain conv/act net (``fuse_repnet``: gates folded in, a spec that says so);
    any other module has each of its blocks' branches fused (``reparameterize_blocks``).
    A user's own CNN (``repas.graph``) has its conv + BatchNorm pairs folded by
    ``repas.graph.fuse_user_model``."""
    if isinstance(model, RepNet):
        return fuse_repnet(model, inplace=inplace)
    return reparameterize_blocks(model, inplace=inplace)
