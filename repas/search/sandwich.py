"""The sandwich rule for the dense stage: every training step also trains randomly narrowed
subnets of the supernet, taught by the full net's output (in-place distillation; Yu & Huang,
"Universally Slimmable Networks", 2019; AutoSlim; BigNAS).

Why: a one-shot search (``eagleeye``) judges width allocations in the trained dense net
before any fine-tuning. In a net trained only at full width, a layer cut to a few channels
looks harmless (its features are redundant at full width), and the search starves it; the
fine-tune then finds the bottleneck. In a net whose subnets trained too, each allocation is
judged as it trains. Each subnet keeps, in every gated layer, a random share in
``[smallest, 1]`` of the channels, those with the highest filter L1 norms (the ranking the
one-shot methods ``eagleeye`` and ``l1-layer`` cut by), re-ranked every ``refresh`` steps.
The subnet passes leave BatchNorm's running statistics alone (momentum 0), so the full net
evaluates as before; a subnet judged later recalibrates its own. Costs one more forward and
backward of the full-sized net per subnet and step (the gates mask, they do not shrink).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from repas.errors import RepasError
from repas.search.allocation import round_width, top_k_mask
from repas.search.prunable import filter_norms


class SandwichRule:
    """A loss term for ``repas.train.Trainer``: ``batch_loss(images, output)`` is the
    distillation loss of ``subnets`` random subnets to the full net's ``output``."""

    searches = False  # not a search: the dense stage keeps its EMA net as usual

    def __init__(self, model: nn.Module, task: Any, *, subnets: int = 1, smallest: float = 0.25,
                 step: int = 1, refresh: int = 50, seed: int = 0) -> None:
        if subnets < 1 or not 0.0 < smallest <= 1.0:
            raise RepasError(f"train.sandwich needs at least 1 subnet a step and train.sandwich_min in (0, 1], got "
                             f"{subnets} and {smallest}")
        gates = model.gate_modules() if hasattr(model, "gate_modules") else []
        if not any(g is not None for g in gates):
            raise RepasError("train.sandwich trains narrowed subnets through the supernet's gates, and this net has "
                             "none: build it gated (repas.create_model(name, gated=True))")
        self.model, self.task = model, task
        self.subnets, self.smallest, self.step, self.refresh = subnets, smallest, step, refresh
        self.generator = torch.Generator().manual_seed(seed)
        self.ranking: list[torch.Tensor] | None = None
        self.last = 0.0

    # ---- the LossTerm protocol ---------------------------------------------------------
    def penalty(self) -> torch.Tensor:
        return torch.zeros(())

    def after_step(self, update: int) -> None:
        if update % self.refresh == 0:
            self.ranking = None

    def metrics(self) -> dict[str, float]:
        return {"sandwich_loss": self.last}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.ranking = None

    # ---- the subnets -------------------------------------------------------------------
    def sample_masks(self) -> list[torch.Tensor | None]:
        """One random subnet: a kept-channel mask per gated layer (None where ungated)."""
        if self.ranking is None:
            with torch.no_grad():
                self.ranking = [s.detach().float().cpu() for s in filter_norms(self.model)]
        masks: list[torch.Tensor | None] = []
        for gate, scores in zip(self.model.gate_modules(), self.ranking):
            if gate is None:
                masks.append(None)
                continue
            share = self.smallest + (1.0 - self.smallest) * float(torch.rand((), generator=self.generator))
            full = scores.numel()
            masks.append(top_k_mask(scores, round_width(share * full, full, self.step)))
        return masks

    def batch_loss(self, images: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The subnets' loss on ``images``, each taught by the full net's ``output``."""
        target = output.detach().float()
        total = torch.zeros((), device=output.device)
        for _ in range(self.subnets):
            with self.narrowed(self.sample_masks()):
                total = total + self.task.distill_loss(self.model(images).float(), target, 1.0)
        self.last = float(total.detach()) / self.subnets
        return total

    @contextmanager
    def narrowed(self, masks: list[torch.Tensor | None]) -> Iterator[None]:
        """The supernet computing the subnet of ``masks``, BatchNorm's running statistics frozen."""
        gates = [g for g in self.model.gate_modules() if g is not None]
        saved = [g.weight.detach().clone() for g in gates]
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        counts = [m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None for m in norms]
        try:
            with torch.no_grad():
                for g, m in zip(gates, (m for m in masks if m is not None)):
                    g.weight.copy_(m.to(g.weight))
            for m in norms:
                m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
            yield
        finally:
            with torch.no_grad():
                for g, w in zip(gates, saved):
                    g.weight.copy_(w)
            for m, momentum, count in zip(norms, momenta, counts):
                m.momentum = momentum
                if count is not None:
                    m.num_batches_tracked.copy_(count)  # the cumulative average (momentum None) counts them
