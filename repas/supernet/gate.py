"""BinaryGate: PaS's depthwise binary convolution that switches channels on and off."""

from __future__ import annotations

import torch
from torch import nn


class BinaryGate(nn.Module):
    """Multiplies channel c by ``b_c = 1[w_c > threshold]``, one real weight per channel.

    The backward pass is the straight-through estimator: ``b`` is computed as
    ``w - (w - 1[w > t]).detach()``, so its value is binary and its gradient with respect to
    ``w`` is 1. Weights start at 1.0 (every channel on). A frozen gate is a fixed mask.

    One departure from PaS: the channel with the largest weight stays on even when every
    weight falls under the threshold (``min_on=1``). A layer with no channel cuts the
    network in two, and the budget's gradient, bilinear in neighbouring widths, cannot bring
    it back; it also keeps every extracted layer at least one channel wide.
    """

    def __init__(self, channels: int, threshold: float = 0.5, min_on: int = 1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.threshold = threshold
        self.min_on = min(min_on, channels)
        self.frozen = False
        self._hard: tuple[tuple[int, int], torch.Tensor] | None = None  # ((storage, version), 0/1 mask)

    def mask(self) -> torch.Tensor:
        """Which channels are on, as a bool tensor (no gradient)."""
        return self._hard_mask().bool()

    def _hard_mask(self) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # Checked first: a graph that read the cache's key (the weight's version, bumped by
            # every optimizer step) would be guarded on it and recompiled at every step.
            return self._compute_mask().to(self.weight.dtype)
        # A search step asks twice (forward and the budget's count); the weights change only
        # by in-place updates, which bump their version (a copy gets new storage).
        key = (self.weight.data_ptr(), self.weight._version)
        if self._hard is not None and self._hard[0] == key:
            return self._hard[1]
        hard = self._compute_mask().to(self.weight.dtype)
        self._hard = (key, hard)
        return hard

    def _compute_mask(self) -> torch.Tensor:
        w = self.weight.detach()
        on = w > self.threshold
        if self.min_on == 1:  # tensor ops only, no Python branch on values: torch.export traces it
            strongest = torch.nn.functional.one_hot(w.argmax(), w.numel()).bool()
            on = on | (strongest & ~on.any())
        elif self.min_on > 1:
            strongest = w >= torch.topk(w, self.min_on).values[-1]
            on = on | (strongest & (on.sum() < self.min_on))
        return on

    def binary(self) -> torch.Tensor:
        """The 0/1 mask, carrying the straight-through gradient unless frozen."""
        hard = self._hard_mask()
        if self.frozen:
            return hard
        return self.weight - (self.weight - hard).detach()

    def count(self) -> torch.Tensor:
        """The number of channels on; differentiable through the STE."""
        return self.binary().sum()

    def freeze(self, frozen: bool = True) -> BinaryGate:
        self.frozen = frozen
        self.weight.requires_grad_(not frozen)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.binary().view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"channels={self.weight.numel()}, threshold={self.threshold}, frozen={self.frozen}"
