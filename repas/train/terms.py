"""The protocol of what a search adds to training (a pruning method's budget loss or
regulariser): the trainer calls these, and nothing else, on its extra loss terms."""

from __future__ import annotations

from typing import Any, Protocol

import torch


class LossTerm(Protocol):
    """What a search adds to training: a ``PruningMethod`` is one. A term may also define
    ``batch_loss(images, output) -> Tensor``, added to the loss with the batch in hand
    (``repas.search.sandwich.SandwichRule`` trains subnets on it), and ``searches = False``
    when it is not a search (the stage then keeps its EMA net)."""

    def penalty(self) -> torch.Tensor: ...

    def after_step(self, update: int) -> None: ...

    def metrics(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
