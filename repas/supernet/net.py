"""RepNet: the VGG-like network an ArchSpec describes, gated or not, fused or not."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from repas.errors import RepasError
from repas.reparam import RepBlock
from repas.spec import ArchSpec
from repas.sr_geometry import residual_weight
from repas.supernet.gate import BinaryGate


class RepNet(nn.Module):
    """Conv blocks in sequence (each optionally followed by a BinaryGate), then the task
    head: pool + linear (classification) or global residual + PixelShuffle (SR)."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        self.blocks = nn.ModuleList()
        self.gates = nn.ModuleList()
        for i, lay in enumerate(spec.layers):
            try:
                block = RepBlock(spec.in_channels_of(i), lay.out_channels, lay.kernel, lay.stride, lay.branches,
                                 lay.act or spec.act, lay.identity_map, lay.groups, lay.dilation, lay.mid_channels)
            except ValueError as e:
                raise RepasError(f"spec {spec.name!r}, layer {i}: {e}") from None
            self.blocks.append(block)
            self.gates.append(BinaryGate(lay.out_channels) if lay.gated else nn.Identity())
        self.super_resolution = spec.task == "super-resolution"
        if self.super_resolution:
            # nearest-neighbour upsampling of the input as a fixed 1x1 conv (XNNPACK takes it whole)
            residual = torch.from_numpy(residual_weight(spec.in_channels, spec.scale))
            self.register_buffer("residual", residual, persistent=False)
            self.shuffle = nn.PixelShuffle(spec.scale)
        else:
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(spec.layers[-1].out_channels, spec.num_classes)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The last block's output and the gate values still to apply to it (or None).

        A gate multiplies its layer's output channels; here it is handed to the next block,
        which folds it into its weights (the same function, without extra passes over the
        activations)."""
        scale = None
        for block, gate in zip(self.blocks, self.gates):
            x = block(x, scale)
            scale = gate.binary() if isinstance(gate, BinaryGate) else None
        return x, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, scale = self.features(x)
        if self.super_resolution:
            if scale is not None:
                y = y * scale.view(1, -1, 1, 1)
            return self.shuffle(y + F.conv2d(x, self.residual))
        pooled = torch.flatten(self.pool(y), 1)
        return self.head(pooled if scale is None else pooled * scale)

    def gate_modules(self) -> list[BinaryGate | None]:
        """The gate of every layer, None where the layer is not gated."""
        return [g if isinstance(g, BinaryGate) else None for g in self.gates]

    def gate_parameters(self) -> list[nn.Parameter]:
        return [g.weight for g in self.gate_modules() if g is not None]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the gates' (which learn by SGD of their own, without decay)."""
        gates = {id(p) for p in self.gate_parameters()}
        return [p for p in self.parameters() if id(p) not in gates]

    def channel_counts(self) -> list[torch.Tensor | int]:
        """Output channels of every layer: the gate's differentiable count, or the fixed width."""
        return [g.count() if g is not None else lay.out_channels
                for g, lay in zip(self.gate_modules(), self.spec.layers)]

    def freeze_gates(self, frozen: bool = True) -> None:
        for g in self.gate_modules():
            if g is not None:
                g.freeze(frozen)


def build(spec: ArchSpec) -> RepNet:
    """Build the network a spec describes (weights freshly initialised)."""
    return RepNet(spec)
