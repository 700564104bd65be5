"""``ffr``: feature-flow regularization: penalise how fast, and how unevenly, the features
change from block to block, then prune the channels the smoothed flow leaves small.

Paper (FFR, Wu et al.): features along the depth are a flow; penalising its gradient and
curvature (first and second differences between consecutive layers) makes the trajectory
smooth, which drives many parameters to small values, then removed. repas: on every batch,
``strength`` x the mean squared first difference plus half the second difference of the
block outputs, between consecutive blocks whose outputs have one shape (a stage's identity
blocks; others have no difference to take); then filter-L1 norms, one global threshold.
Differs: differences only inside a stage (no projection between shapes).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from repas.search.allocation import global_masks
from repas.search.methods.magnitude import l1_scores
from repas.search.methods.registry import Masks, PruningMethod, register_method


def flow_penalty(features: list[torch.Tensor]) -> torch.Tensor:
    """Mean squared first differences plus half the second differences of consecutive
    same-shaped features (zero where no two consecutive blocks share a shape)."""
    total, terms = torch.zeros(()), 0
    for i in range(1, len(features)):
        a, b = features[i - 1], features[i]
        if a.shape == b.shape:
            total = total + (b - a).pow(2).mean()
            terms += 1
            if i >= 2 and features[i - 2].shape == a.shape:
                total = total + 0.5 * (b - 2 * a + features[i - 2]).pow(2).mean()
    return total / max(terms, 1)


@register_method("ffr")
class FeatureFlow(PruningMethod):
    summary = "feature-flow regularization: smooth block-to-block features while training, then L1 (FFR; trains)"
    trains = True
    default_strength: ClassVar[float] = 0.1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.strength is None:
            self.strength = self.default_strength
        self._features: list[torch.Tensor] = []
        self._hooks = [b.register_forward_hook(self._keep(i)) for i, b in enumerate(self.model.blocks)]
        self._last = 0.0

    def _keep(self, index: int):  # noqa: ANN202 (a forward hook)
        def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
            if not self.model.training:  # evaluation passes are not penalised (nor kept)
                return
            if index == 0:  # a new forward pass: the previous one's features are done with
                self._features = []
            self._features.append(output)
        return hook

    def batch_loss(self, images: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The flow penalty of the block outputs of the forward pass that made ``output``."""
        features, self._features = self._features, []
        loss = flow_penalty(features)
        self._last = float(loss.detach())
        return self.strength * loss

    def metrics(self) -> dict[str, float]:
        return {"flow_penalty": self._last}

    @torch.no_grad()
    def select(self, inputs: torch.Tensor | None = None) -> tuple[Masks, list[torch.Tensor]]:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        scores = l1_scores(self)
        return global_masks(self.model.spec, scores, self.budget, step=self.step, tolerance=self.tolerance), scores
