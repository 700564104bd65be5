"""``cap``: compensation-aware pruning: cut, then reconstruct what reads each cut layer from
a few unlabeled images, in a time budget, instead of most of the retraining.

Paper (CaP): after channels are removed, a fast, data-efficient reconstruction of the next
layer's features compensates for them, and replaces most of the fine-tuning. repas: uniform
widths (the allocation repas measured best here), each layer keeping its highest filter-L1
channels; then layer by layer the next layer's equivalent kernel over the kept channels is
refit by least squares to the dense net's pre-activations on ``input_count`` training
images, no labels (``lasso.reconstruct``), until ``seconds`` are spent. Differs: one
least-squares pass, no iterative compensation schedule; the fine-tune after it still runs
(``finetune.epochs: 0`` ships the compensated net as it is).
"""

from __future__ import annotations

import time
from typing import ClassVar

import torch

from repas.errors import RepasError
from repas.search.allocation import uniform_masks
from repas.search.methods.lasso import reconstruct
from repas.search.methods.magnitude import l1_scores
from repas.search.methods.registry import Masks, PruningMethod, register_method


@register_method("cap")
class Compensation(PruningMethod):
    summary = ("uniform widths by filter L1, then the next layers refit by least squares to the dense "
               "features on unlabeled images, in a time budget (CaP)")
    needs_inputs = True
    input_count: ClassVar[int] = 512
    seconds: ClassVar[float] = 60.0  # the compensation's time budget

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 (PruningMethod's)
        super().__init__(*args, **kwargs)
        self.report: dict[str, float] = {}

    @torch.no_grad()
    def select(self, inputs: torch.Tensor | None = None) -> tuple[Masks, list[torch.Tensor]]:
        if inputs is None:
            raise RepasError("method cap reconstructs features of training images: pass inputs (a batch of them)")
        scores = l1_scores(self)
        masks = uniform_masks(self.model.spec, scores, self.budget, step=self.step, tolerance=self.tolerance)
        self.model.eval()
        started = time.perf_counter()
        layers = reconstruct(self.model, masks, inputs, seconds=self.seconds)
        self.report = {"compensation_seconds": time.perf_counter() - started, "layers_compensated": float(layers)}
        return masks, scores

    def metrics(self) -> dict[str, float]:
        return dict(self.report)
