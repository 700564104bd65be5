"""Extraction: gates -> widths, and a physically smaller net that inherits sliced weights.

The extracted net equals the gated supernet on every input: output channels of layer l
are sliced by its own mask, input channels by its producer's mask (pruned inputs were
zero in the supernet), and the identity branch keeps a fixed index map from each kept
output channel to the same channel in the kept inputs (or none, where it was pruned).
"""

from __future__ import annotations

import torch

from repas.spec import ArchSpec
from repas.supernet.gating import gate_masks
from repas.supernet.net import RepNet


def subnet_spec(spec: ArchSpec, masks: list[torch.Tensor], mids: list[dict[str, int]] | None = None) -> ArchSpec:
    """The spec of the net that keeps ``masks[l]`` of layer l: no gates, identity maps, and
    the intermediate widths ``mids[l]`` of two-stage branches kept as they were."""
    d = spec.to_dict()
    mids = mids or [{} for _ in masks]
    in_idx = torch.arange(spec.in_channels)
    for i, (lay, m) in enumerate(zip(d["layers"], masks)):
        out_idx = torch.nonzero(m).flatten()
        if out_idx.numel() == 0:
            raise ValueError(f"layer {i} keeps no channel; every layer needs at least one")
        lay["out_channels"] = int(out_idx.numel())
        lay["gated"] = False
        if mids[i]:
            lay["mid_channels"] = mids[i]
        if any(b in ("identity", "identity_plain") for b in lay["branches"]):
            old_map = lay["identity_map"]
            position = {int(c): p for p, c in enumerate(in_idx)}
            src = [old_map[int(o)] if old_map is not None else int(o) for o in out_idx]
            lay["identity_map"] = [position.get(s, -1) if s >= 0 else -1 for s in src]
        in_idx = out_idx
    d["name"] = f"{spec.name}-sub"
    return ArchSpec.from_dict(d)


@torch.no_grad()
def extract_subnet(model: RepNet, masks: list[torch.Tensor] | None = None) -> RepNet:
    """A smaller RepNet (no gates) equal to ``model`` gated by ``masks`` (default: its gates)."""
    masks = gate_masks(model) if masks is None else masks
    mids = [b.mid_channels() for b in model.blocks]
    sub = RepNet(subnet_spec(model.spec, masks, mids)).to(next(model.parameters()))
    in_idx = torch.arange(model.spec.in_channels)
    for big, small, m in zip(model.blocks, sub.blocks, masks):
        out_idx = torch.nonzero(m).flatten()
        small.load_sliced(big, out_idx, in_idx)
        in_idx = out_idx
    if not sub.super_resolution:
        sub.head.weight.copy_(model.head.weight[:, in_idx])
        sub.head.bias.copy_(model.head.bias)
    sub.train(model.training)
    return sub
