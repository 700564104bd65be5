"""Image classification: label-smoothed cross-entropy, top-1 / top-5 accuracy."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top == labels[:, None]).any(dim=1).sum())


class ClassificationTask:
    """Loss for training, metrics for evaluation. The primary metric is ``top1`` (%)."""

    primary_metric = "top1"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.criterion(output, target)

    def distill_loss(self, output: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        """Hinton's distillation: KL from the teacher's softened distribution, times T^2 so
        that its gradients keep their scale as T changes."""
        t = temperature
        return F.kl_div(F.log_softmax(output / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean",
                        log_target=True) * t * t

    @torch.no_grad()
    def evaluate(self, predict: Callable[[torch.Tensor], torch.Tensor],
                 batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """Top-1 and top-5 accuracy (%) of ``predict`` (a model, or any callable on a batch)."""
        n = top1 = top5 = 0
        for images, labels in batches:
            logits = torch.as_tensor(predict(images))
            top1 += topk_correct(logits, labels, 1)
            top5 += topk_correct(logits, labels, 5)
            n += len(labels)
        return {"top1": 100.0 * top1 / max(n, 1), "top5": 100.0 * top5 / max(n, 1)}
