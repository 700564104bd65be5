"""``eagleeye``: choose the layer widths by trying many, each judged after its BatchNorm
statistics are recalibrated (EagleEye, Li et al. 2020), in a label-free form.

A candidate is one width per layer meeting the budget: random log-normal ratios around the
uniform multiplier (the uniform allocation itself is the first candidate), each layer within
2x of its uniform width, scaled until the cost meets the target, each layer keeping its
highest filter-L1 channels. Every candidate
is cut from the trained net, its BatchNorm statistics recomputed on training inputs
(``torch.optim.swa_utils.update_bn``: a pruned net's features have other statistics, and
judging it with the dense net's is what makes one-shot pruning look random), then scored
by how far its outputs stay from the dense net's on other inputs: the KL divergence of the
class distributions, or the mean squared error of an image output. The best random
candidates are then mutated with a smaller spread. The widths are decided before any
training, so every epoch after it trains the final net, as for uniform scaling: the two
differ only in the allocation. Costs only forward passes (about ``candidates`` x 2 x
``probe`` images); the budget may be MACs, params or measured latency.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn

from repas.errors import RepasError
from repas.search.allocation import fit_to_budget, round_width, top_k_mask
from repas.search.methods.magnitude import l1_scores
from repas.search.methods.registry import Masks, PruningMethod, register_method
from repas.search.prunable import pruned_view

log = logging.getLogger("repas.search")


@register_method("eagleeye")
class AdaptiveBN(PruningMethod):
    any_model = True
    summary = "random width allocations around uniform, BN recalibrated, closest to the dense outputs (EagleEye)"
    needs_inputs = True
    input_count: ClassVar[int] = 2048  # half recalibrate BatchNorm, half judge the outputs
    candidates: ClassVar[int] = 40     # random allocations (the uniform one included)
    mutations: ClassVar[int] = 24      # then mutations of the best ones, at half the spread
    spread: ClassVar[float] = 0.35     # standard deviation of the log width ratios
    # No layer's width strays beyond 2x (or 1/2) of its width under uniform scaling. Unbounded,
    # the proxy chose a 4-channel first layer at 0.25x MACs (a bottleneck it cannot see before
    # fine-tuning; uniform gives it 12), and lost 0.2 points to uniform.
    bound: ClassVar[float] = 2.0
    batch: ClassVar[int] = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.generator = torch.Generator().manual_seed(torch.initial_seed())  # the run's seed
        self.tried: list[dict[str, Any]] = []  # every candidate: widths, cost, score (for the report)

    def widths_for(self, ratios: torch.Tensor, around: list[int] | None = None) -> list[int]:
        """Widths proportional to ``ratios`` (one per layer, capped at the full width, and
        within ``bound`` of the widths ``around`` when given), with the largest common scale
        whose cost meets the target (bisection)."""
        spec = self.model.spec
        limits = [(u / self.bound, u * self.bound) for u in around] if around else [(0.0, math.inf)] * len(ratios)

        def at(scale: float) -> list[int]:
            return [round_width(min(max(lo, min(1.0, scale * float(r)) * lay.out_channels), hi), lay.out_channels,
                                self.step) if lay.gated else lay.out_channels
                    for r, lay, (lo, hi) in zip(ratios, spec.layers, limits)]

        lo, hi = 0.0, 1.0 / float(ratios.min())
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if float(self.budget.cost(at(mid))) <= self.budget.target else (lo, mid)
        return at(lo)

    @torch.no_grad()
    def select(self, inputs: torch.Tensor | None = None) -> tuple[Masks, list[torch.Tensor]]:
        self._setup(inputs)
        n = len(self.model.spec.layers)
        trials = [self._judge(torch.ones(n))]  # uniform scaling first: the search can only do better by the proxy
        self._uniform = [int(m.sum()) for m in trials[0][1]]
        for _ in range(self.candidates - 1):
            trials.append(self._judge(self._ratios(torch.zeros(n), self.spread)))
        for k in range(self.mutations):
            parents = sorted(trials, key=lambda t: t[0])[:4]
            base = torch.tensor([math.log(max(int(m.sum()), 1) / len(m)) for m in parents[k % len(parents)][1]])
            trials.append(self._judge(self._ratios(base, self.spread / 2)))
        best = min(trials, key=lambda t: t[0])[1]
        seconds = time.perf_counter() - self._started
        log.info(f"search ({self.name}): {len(trials)} candidates judged in {seconds:.0f} s")
        return best, self._scores

    def _setup(self, inputs: torch.Tensor | None) -> None:
        """The channel ranking, the inputs that recalibrate and judge, the dense outputs."""
        if inputs is None:
            raise RepasError(f"method {self.name} judges candidates on training images: pass inputs (a batch of "
                             "them)")
        self._scores = l1_scores(self)
        half = len(inputs) // 2
        self._calibrate = list(inputs[:half].split(self.batch))
        self._probe = list(inputs[half:].split(self.batch))
        self.model.eval()
        self._reference = [self.model(x) for x in self._probe]
        self._seen: dict[tuple[int, ...], float] = {}
        self._uniform: list[int] | None = None  # candidate 0's widths bound the others'
        # the fit to the budget compares channels across layers: raw filter norms would cut the
        # first layer (one input channel, the smallest norms) first, whatever its worth
        self._relative = [s / s.mean().clamp_min(1e-12) for s in self._scores]
        self._judged, self._started = 0, time.perf_counter()

    def _judge(self, ratios: torch.Tensor) -> tuple[float, Masks]:
        """The divergence of the net with widths proportional to ``ratios`` (meeting the
        budget), and its masks; each distinct net judged once."""
        if self._judged and self._judged % 10 == 0:  # some minutes on a big net: say how far it is
            log.info(f"search ({self.name}): {self._judged} candidates judged "
                     f"({time.perf_counter() - self._started:.0f} s)")
        self._judged += 1
        spec = self.model.spec
        masks = [top_k_mask(s, w) for s, w in zip(self._scores, self.widths_for(ratios, self._uniform))]
        masks = fit_to_budget(spec, masks, self._relative, self.budget, step=self.step, tolerance=self.tolerance)
        widths = tuple(int(m.sum()) for m in masks)
        if widths not in self._seen:
            self._seen[widths] = self._divergence(masks, self._calibrate, self._probe, self._reference)
            self.tried.append({"widths": list(widths), "cost": float(self.budget.cost(list(widths))),
                               "divergence": self._seen[widths]})
        return self._seen[widths], masks

    def _ratios(self, log_base: torch.Tensor, spread: float) -> torch.Tensor:
        return (log_base + spread * torch.randn(len(log_base), generator=self.generator)).exp()

    def _divergence(self, masks: Masks, calibrate: list[torch.Tensor], probe: list[torch.Tensor],
                    reference: list[torch.Tensor]) -> float:
        """How far the net cut by ``masks`` (BatchNorm recalibrated) is from the dense outputs."""
        total = 0.0
        with pruned_view(self.model, masks) as net:
            update_bn(calibrate, net)
            net.eval()
            for x, ref in zip(probe, reference):
                out = net(x)
                if self.model.spec.task == "classification":
                    total += float(F.kl_div(out.log_softmax(1), ref.log_softmax(1), log_target=True,
                                            reduction="batchmean")) * len(x)
                else:
                    total += float(F.mse_loss(out, ref)) * len(x)
        return total / sum(len(x) for x in probe)

    def metrics(self) -> dict[str, float]:
        return {"candidates": float(len(self.tried))}
