"""Tasks: what a network is trained for (loss) and how it is scored (metrics)."""

from repas.tasks.classification import ClassificationTask, topk_correct

__all__ = ["ClassificationTask", "topk_correct"]
