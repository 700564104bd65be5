"""The training-time part of the baseline methods that train before they prune: a penalty
added to the task loss and a hook after every update, with their state checkpointed so
that a resumed run ends where an uninterrupted one does.

- ``SlimmingPenalty``: L1 on BN scales (network slimming).
- ``GroupLassoPenalty``: out-in-channel group lasso (OICSR).
- ``ADMMProjection``: structured ADMM (the SSR / AULM idea): loss minimisation alternating
  with projection of the filters onto width allocations that meet the budget, and a scaled
  Lagrange multiplier ``U`` updated after every projection.
- ``CorrelationMerge``: in rounds, pick the most correlated filter pairs, push each pair to
  be more correlated, then switch one of each pair off (its gate frozen at 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from repas.search.importance import bn_scales, equivalent_kernels, filter_correlation, gated_layers, out_in_groups
from repas.supernet.net import RepNet

Masks = list[torch.Tensor]
Allocate = Callable[[list[torch.Tensor], float], Masks]  # (scores, target) -> masks meeting it


class Regularizer:
    """No penalty, no hook: subclasses override what they need."""

    def penalty(self, model: RepNet) -> torch.Tensor:
        return torch.zeros(())

    def after_step(self, model: RepNet, update: int) -> None:
        pass

    def finish(self, model: RepNet) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class SlimmingPenalty(Regularizer):
    def __init__(self, strength: float) -> None:
        self.strength = strength

    def penalty(self, model: RepNet) -> torch.Tensor:
        scales = bn_scales(model)
        return self.strength * sum(scales[i].sum() for i in gated_layers(model))


class GroupLassoPenalty(Regularizer):
    def __init__(self, strength: float) -> None:
        self.strength = strength

    def penalty(self, model: RepNet) -> torch.Tensor:
        return self.strength * sum(g.norm(dim=1).sum() for g in out_in_groups(model) if g is not None)


def _filter_rows(model: RepNet) -> list[torch.Tensor]:
    """Every gated layer's filters (equivalent kernel and bias) as rows; differentiable."""
    kernels = equivalent_kernels(model)
    return [torch.cat([kernels[i][0].flatten(1), kernels[i][1].unsqueeze(1)], dim=1) for i in gated_layers(model)]


class ADMMProjection(Regularizer):
    """``rho / 2 * sum_l ||W_l - Z_l + U_l||^2`` where W are the filters, Z their projection
    onto allocations that meet the budget (``allocate``) and U the scaled multiplier.
    Every ``interval`` updates: ``Z = project(W + U)``, then ``U += W - Z``."""

    def __init__(self, rho: float, interval: int, allocate: Allocate, target: float, full: list[int]) -> None:
        self.rho, self.interval, self.allocate, self.target, self.full = rho, max(1, interval), allocate, target, full
        self.Z: list[torch.Tensor] | None = None
        self.U: list[torch.Tensor] | None = None
        self.scores: list[torch.Tensor] | None = None
        self.masks: Masks | None = None

    def _project(self, model: RepNet, rows: list[torch.Tensor]) -> None:
        gated = gated_layers(model)
        v = [w + u for w, u in zip(rows, self.U)]
        scores = [torch.ones(f) for f in self.full]
        for i, vi in zip(gated, v):
            scores[i] = vi.norm(dim=1) / vi.shape[1] ** 0.5
        self.masks = self.allocate(scores, self.target)
        self.scores = scores
        self.Z = [vi * self.masks[i].to(vi).unsqueeze(1) for i, vi in zip(gated, v)]

    def penalty(self, model: RepNet) -> torch.Tensor:
        rows = _filter_rows(model)
        if self.Z is None:
            with torch.no_grad():
                self.U = [torch.zeros_like(w) for w in rows]
                self._project(model, [w.detach() for w in rows])
        return self.rho / 2 * sum(((w - z + u) ** 2).sum() for w, z, u in zip(rows, self.Z, self.U))

    @torch.no_grad()
    def after_step(self, model: RepNet, update: int) -> None:
        if update % self.interval == 0 and self.Z is not None:
            rows = _filter_rows(model)
            self._project(model, rows)
            self.U = [u + w - z for u, w, z in zip(self.U, rows, self.Z)]

    @torch.no_grad()
    def finish(self, model: RepNet) -> None:
        if self.U is None:
            self.U = [torch.zeros_like(w) for w in _filter_rows(model)]
        self._project(model, _filter_rows(model))

    def state_dict(self) -> dict[str, Any]:
        return {"Z": self.Z, "U": self.U}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.Z, self.U = state.get("Z"), state.get("U")


class CorrelationMerge(Regularizer):
    """``rounds`` rounds over the training updates. At the start of round r, pairs of
    strongly correlated filters (|cosine| of the equivalent kernels) are chosen, globally,
    most correlated first, until dropping one of each brings the cost to
    ``dense - (dense - target) * (r + 1) / rounds``; during the round the penalty
    ``strength * sum(1 - |cos|)`` pulls each pair together; at its end the weaker filter of
    each pair (smaller L1) is switched off."""

    def __init__(self, strength: float, interval: int, rounds: int, cost: Callable[[list[int]], float],
                 target: float) -> None:
        self.strength, self.interval, self.rounds = strength, max(1, interval), max(1, rounds)
        self.cost, self.target = cost, target
        self.pairs: list[list[int]] = []  # [layer, keep, drop]
        self.round = 0
        self.started = False

    @staticmethod
    def _alive(model: RepNet) -> list[torch.Tensor]:
        return [g.mask() if g is not None else torch.ones(lay.out_channels, dtype=torch.bool)
                for g, lay in zip(model.gate_modules(), model.spec.layers)]

    @torch.no_grad()
    def _choose(self, model: RepNet, goal: float) -> None:
        alive = self._alive(model)
        widths = [int(a.sum()) for a in alive]
        kernels = equivalent_kernels(model)
        candidates = []
        for i in gated_layers(model):
            corr = filter_correlation(kernels[i][0])
            on = alive[i]
            corr[~on] = -1.0
            corr[:, ~on] = -1.0
            l1 = kernels[i][0].abs().flatten(1).sum(dim=1)
            upper = torch.triu_indices(len(on), len(on), offset=1)
            values = corr[upper[0], upper[1]]
            for k in torch.argsort(values, descending=True).tolist():
                if values[k] < 0:
                    break
                a, b = int(upper[0][k]), int(upper[1][k])
                keep, drop = (a, b) if l1[a] >= l1[b] else (b, a)
                candidates.append((float(values[k]), i, keep, drop))
        candidates.sort(key=lambda c: -c[0])
        used: set[tuple[int, int]] = set()
        self.pairs = []
        for _, i, keep, drop in candidates:
            if float(self.cost(widths)) <= goal:
                break
            if (i, keep) in used or (i, drop) in used or widths[i] <= 1:
                continue
            used.update({(i, keep), (i, drop)})
            widths[i] -= 1
            self.pairs.append([i, keep, drop])

    def _goal(self, model: RepNet) -> float:
        dense = float(self.cost(model.spec.widths))
        return dense - (dense - self.target) * (self.round + 1) / self.rounds

    @torch.no_grad()
    def _drop(self, model: RepNet) -> None:
        gates = model.gate_modules()
        for i, _, drop in self.pairs:
            gates[i].weight[drop] = 0.0
        self.pairs = []

    def penalty(self, model: RepNet) -> torch.Tensor:
        if not self.started:
            self._choose(model, self._goal(model))
            self.started = True
        if not self.pairs:
            return torch.zeros(())
        kernels = equivalent_kernels(model)
        loss = torch.zeros(())
        for i, keep, drop in self.pairs:
            a, b = kernels[i][0][keep].flatten(), kernels[i][0][drop].flatten()
            cos = (a @ b) / (a.norm() * b.norm()).clamp_min(1e-12)
            loss = loss + (1 - cos.abs())
        return self.strength * loss

    def after_step(self, model: RepNet, update: int) -> None:
        if update % self.interval == 0 and self.round < self.rounds:
            self._drop(model)
            self.round += 1
            if self.round < self.rounds:
                self._choose(model, self._goal(model))

    def finish(self, model: RepNet) -> None:
        """Drop what is left to the target (an interrupted schedule, or too few updates)."""
        self._drop(model)
        self.round = self.rounds
        for _ in range(sum(model.spec.widths)):
            widths = [int(a.sum()) for a in self._alive(model)]
            if float(self.cost(widths)) <= self.target:
                break
            self._choose(model, self.target)
            if not self.pairs:
                break
            self._drop(model)

    def state_dict(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "round": self.round, "started": self.started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pairs, self.round = [list(p) for p in state.get("pairs", [])], int(state.get("round", 0))
        self.started = bool(state.get("started", False))
