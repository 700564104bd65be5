"""``casd``: the search and a teacher's distillation run together: PaS's gates learn the
widths while the supernet learns from the dense net's outputs as well as from the labels.

Paper (CASD, cooperative architecture search and distillation): the architecture search
and knowledge distillation from a teacher are run jointly, so that the search picks the
structure the distilled student learns best, instead of distilling into a fixed result.
repas: PaS (budget priced per channel), plus ``weight`` x the distillation loss to the dense
supernet as it was when the search began (KL at temperature ``temperature`` for
classification, MSE for image outputs) on every training batch; ``finetune.distill``
continues it after extraction. Differs: the teacher is frozen, not trained alongside.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from repas.search.methods.pas import PaS
from repas.search.methods.registry import register_method


@register_method("casd")
class CooperativeDistillation(PaS):
    any_model = False  # the teacher is the supernet itself, gates on
    summary = "PaS with the dense net distilled into the supernet while its gates search (CASD; trains)"
    weight: ClassVar[float] = 0.5
    temperature: ClassVar[float] = 4.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        self._last = 0.0

    def batch_loss(self, images: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The distillation term on this batch (the trainer adds it to the loss)."""
        self.teacher.to(images.device)
        with torch.no_grad():
            taught = self.teacher(images).float()
        out = output.float()
        if self.model.spec.task == "classification":
            t = self.temperature
            loss = F.kl_div(F.log_softmax(out / t, 1), F.log_softmax(taught / t, 1), log_target=True,
                            reduction="batchmean") * t * t
        else:
            loss = F.mse_loss(out, taught)
        self._last = float(loss.detach())
        return self.weight * loss

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "distill_loss": self._last}
