"""Per-channel importance for the baseline pruning methods, measured on the filter that is
actually pruned: each block's *equivalent kernel* (all branches fused, BN folded).

The equivalent kernel is a differentiable function of the branches' weights, so one
definition of "filter c of layer l" serves RepVGG, DBB, ECB and MobileOne-style blocks, and
a penalty on it reaches every branch. Group of channel c of layer l (OICSR's out-in group):
row c of layer l's kernel and bias, and column c of the next layer's kernel (or of the
classifier's weights after the last block).
"""

from __future__ import annotations

import torch
from torch import nn

from repas.reparam.branches import ParallelConvBN
from repas.supernet.net import RepNet


def equivalent_kernels(model: RepNet) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(kernel, bias) of every block, as the one conv equal to its branches in eval mode;
    differentiable with respect to the branches' weights."""
    return [block.equivalent_kernel_bias() for block in model.blocks]


def gated_layers(model: RepNet) -> list[int]:
    return [i for i, g in enumerate(model.gate_modules()) if g is not None]


def _consumer_columns(model: RepNet, kernels: list[tuple[torch.Tensor, torch.Tensor]], i: int) -> torch.Tensor | None:
    """Layer i's output channels as columns of what reads them, one row per channel
    (None where a grouped conv reads them: its columns are not per-channel)."""
    if i + 1 < len(kernels):
        if model.blocks[i + 1].groups != 1:
            return None
        return kernels[i + 1][0].transpose(0, 1).flatten(1)
    if model.super_resolution:
        return None
    return model.head.weight.t()


def out_in_groups(model: RepNet, kernels: list[tuple[torch.Tensor, torch.Tensor]] | None = None
                  ) -> list[torch.Tensor | None]:
    """Per gated layer, each channel's out-in group as one flat row (None for ungated layers)."""
    kernels = kernels if kernels is not None else equivalent_kernels(model)
    out: list[torch.Tensor | None] = []
    for i, (k, b) in enumerate(kernels):
        if model.gate_modules()[i] is None:
            out.append(None)
            continue
        parts = [k.flatten(1), b.unsqueeze(1)]
        cols = _consumer_columns(model, kernels, i)
        if cols is not None:
            parts.append(cols)
        out.append(torch.cat(parts, dim=1))
    return out


def group_norms(model: RepNet, normalized: bool = True) -> list[torch.Tensor | None]:
    """L2 norm of each channel's out-in group; ``normalized`` divides by sqrt(group size) so
    that layers with different fan-in compare on one scale."""
    norms = []
    for g in out_in_groups(model):
        if g is None:
            norms.append(None)
            continue
        n = g.norm(dim=1)
        norms.append(n / g.shape[1] ** 0.5 if normalized else n)
    return norms


def l1_norms(model: RepNet) -> list[torch.Tensor]:
    """L1 norm of each output filter of every block's equivalent kernel (Li et al.)."""
    return [k.detach().abs().flatten(1).sum(dim=1) for k, _ in equivalent_kernels(model)]


def _branch_scale(branch: nn.Module, kernel: int) -> torch.Tensor:
    if isinstance(branch, ParallelConvBN):
        return sum(_branch_scale(c, kernel) for c in branch.convs)
    for name in ("bn2", "bn"):  # the BN that produces the branch's output
        bn = getattr(branch, name, None)
        if isinstance(bn, nn.BatchNorm2d):
            return bn.weight.abs()
    # a branch without BN (ECB): its filters' norms stand for the scales
    return branch.equivalent_kernel_bias(kernel)[0].flatten(1).norm(dim=1)


def bn_scales(model: RepNet) -> list[torch.Tensor]:
    """Network slimming's channel scale: |gamma| of the block's BN after the sum where it has
    one (QARepVGG), else summed over its branches: |gamma| of each branch's output BN (the
    filter norm for a branch without one). Differentiable."""
    return [block.post_bn.weight.abs() if block.post_bn is not None else
            sum(_branch_scale(b, block.kernel) for b in block.branches.values()) for block in model.blocks]


def filter_correlation(kernel: torch.Tensor) -> torch.Tensor:
    """|cosine| between every pair of a layer's output filters, diagonal zero."""
    rows = kernel.flatten(1)
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    corr = (rows @ rows.t()).abs()
    return corr.fill_diagonal_(0.0)
