"""``evolution``: an evolutionary agent choosing each layer's width (and, under float and
int8 latency tables, its precision) against the budget, without training in the loop.

Paper (AMC, He et al. 2018; HAQ, Wang et al. 2019): a reinforcement-learning agent (DDPG)
walks the layers choosing a pruning ratio (HAQ: a bit width) for each, is rewarded by the
accuracy of the net so cut, and is held to a resource budget by a constraint on its actions.
repas: a population of per-layer width ratios evolves (tournament selection, per-layer
crossover, log-normal mutation, the best kept); each genome is decoded into widths that meet
the budget by scaling all its ratios together (AMC's constraint-aware action), with each
layer in its fastest precision where the budget's latency model prices float and int8 rows
(exact, by dynamic programming over the layers); its reward is how close the net's outputs
stay to the dense net's after BatchNorm recalibration (eagleeye's label-free judge).
Differs: no learned policy (an evolutionary search, as AMC's own ablations compare), and
the reward needs no labels; the precision is chosen for speed, not by the reward.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from repas.search.methods.adaptive_bn import AdaptiveBN
from repas.search.methods.registry import Masks, register_method


@register_method("evolution")
class Evolution(AdaptiveBN):
    any_model = True
    summary = ("an evolutionary agent over per-layer width ratios (and int8/float under mixed tables), "
               "rewarded by outputs after BN recalibration (AMC / HAQ setting)")
    population: ClassVar[int] = 16
    generations: ClassVar[int] = 4  # population x generations nets judged (eagleeye's 64 by default)
    elite: ClassVar[int] = 2
    tournament: ClassVar[int] = 3
    bound: ClassVar[float] = 3.0  # widths within 3x of uniform scaling's (eagleeye: 2x)

    @torch.no_grad()
    def select(self, inputs: torch.Tensor | None = None) -> tuple[Masks, list[torch.Tensor]]:
        self._setup(inputs)
        n = len(self.model.spec.layers)
        first = self._judge(torch.ones(n))  # uniform scaling: the agent starts from it
        self._uniform = [int(m.sum()) for m in first[1]]
        genomes = [torch.zeros(n)] + [self.spread * torch.randn(n, generator=self.generator)
                                      for _ in range(self.population - 1)]  # log ratios
        scored = [(first[0], genomes[0], first[1])]
        for g in genomes[1:]:
            d, masks = self._judge(g.exp())
            scored.append((d, g, masks))
        for _ in range(self.generations - 1):
            scored.sort(key=lambda t: t[0])
            children = list(scored[:self.elite])
            while len(children) < self.population:
                a, b = self._pick(scored), self._pick(scored)
                take = torch.rand(n, generator=self.generator) < 0.5
                child = torch.where(take, a, b) + self.spread / 2 * torch.randn(n, generator=self.generator)
                d, masks = self._judge(child.exp())
                children.append((d, child, masks))
            scored = children
        return min(scored, key=lambda t: t[0])[2], self._scores

    def _pick(self, scored: list[tuple[float, torch.Tensor, Masks]]) -> torch.Tensor:
        """Tournament selection: the best of a few drawn at random."""
        drawn = torch.randint(len(scored), (self.tournament,), generator=self.generator).tolist()
        return min((scored[i] for i in drawn), key=lambda t: t[0])[1]

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        if self.precision:
            out["int8_layers"] = float(sum(p == "int8" for p in self.precision))
        return out
