"""Training: one loop for dense training, search (a pruning method's loss terms and hooks)
and fine-tuning, with checkpoints, exact resume, DDP, tensorboard and EMA."""

from repas.train.optim import gate_optimizer, param_groups
from repas.train.trainer import CHECKPOINT, LossTerm, Trainer

__all__ = ["CHECKPOINT", "LossTerm", "Trainer", "gate_optimizer", "param_groups"]
