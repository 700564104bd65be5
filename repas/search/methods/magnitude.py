"""One-shot methods that prune the trained net as it is: ``uniform`` (one width multiplier
for every layer, no importance criterion), ``l1`` (filter L1 norms of the equivalent
kernels, one global threshold; Li et al.) and ``l1-layer`` (L1 norms, uniform widths)."""

from __future__ import annotations

import torch

from repas.search.allocation import full_scores, global_masks, layer_normalized, uniform_masks
from repas.search.methods.registry import Masks, PruningMethod, register_method
from repas.search.prunable import filter_norms


@register_method("uniform")
class Uniform(PruningMethod):
    any_model = True
    summary = "one width multiplier for every gated layer (the first channels), the largest that fits"

    @torch.no_grad()
    def select(self, inputs: torch.Tensor | None = None) -> tuple[Masks, list[torch.Tensor]]:
        spec = self.model.spec
        scores = [-torch.arange(lay.out_channels, dtype=torch.float32) for lay in spec.layers]
        return uniform_masks(spec, scores, self.budget, step=self.step, tolerance=self.tolerance), scores


def l1_scores(method: PruningMethod) -> list[torch.Tensor]:
    """Filter L1 norms of every block's equivalent kernel, over each layer's mean."""
    return full_scores(method.model.spec, layer_normalized(filter_norms(method.model)))


@register_method("l1")
class L1(PruningMethod):
    any_model = True
    summary = "filter L1 norms (equivalent kernels), one global threshold (Li et al.)"

    @torch.no_grad()
    def select(self, inputs: torch.Tensor | None = None) -> tuple[Masks, list[torch.Tensor]]:
        scores = l1_scores(self)
        return global_masks(self.model.spec, scores, self.budget, step=self.step, tolerance=self.tolerance), scores


@register_method("l1-layer")
class L1Layer(PruningMethod):
    any_model = True
    summary = "filter L1 norms, the same width multiplier for every layer"

    @torch.no_grad()
    def select(self, inputs: torch.Tensor | None = None) -> tuple[Masks, list[torch.Tensor]]:
        scores = l1_scores(self)
        return uniform_masks(self.model.spec, scores, self.budget, step=self.step, tolerance=self.tolerance), scores
