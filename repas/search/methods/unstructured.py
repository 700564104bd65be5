"""The unstructured family: methods that zero single weights of the fused convs, keep every
channel, and fine-tune under their mask (``repas.search.weight_sparsity``).

- ``magnitude``: the smallest weights of the fused kernels, one global ranking of each
  layer's magnitudes over their mean (Han et al., "Learning both weights and connections").
- ``admm-unstructured``: progressive ADMM (Zhang et al., "A systematic DNN weight pruning
  framework using ADMM"; Ye et al., progressive ADMM). The paper alternates W-, Z- and U-steps
  with the sparsity raised over stages; repas penalises each block's *equivalent* kernel
  (``rho/2 ||K - Z + U||^2``, Z the kernel projected onto the sparsity reached so far, raised
  linearly over the first half of the search epochs), then zeroes the fused kernel as
  ``magnitude`` does. It differs in projecting the fused kernel, not each branch.
- ``pattern``: PatDNN (Niu et al.): every 3x3 kernel keeps 4 entries, one of a small set of
  patterns (the 8 most often best over the net, each with the centre), then connectivity
  pruning removes whole kernels, weakest first, down to the budget. PatDNN's compiler runs
  the patterns fast; no runtime here does, and repas says so.

The budget is the cost a zero-skipping runtime would pay (MACs or params of the non-zero
weights); every one of them is, measured here, **accuracy only** (``ACCURACY_ONLY``).
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import torch

from repas.search.methods.registry import Masks, PruningMethod, register_method
from repas.search.weight_sparsity import (
    ACCURACY_ONLY,
    block_convs,
    density,
    masks_by_cost,
    sparse_cost,
    to_remove,
    weight_costs,
)
from repas.supernet import RepNet, conv_bn_form

ADMM_PROJECTIONS_PER_EPOCH = 4
PATTERN_COUNT, PATTERN_ENTRIES = 8, 4  # PatDNN's 4-entry patterns; 6-12 of them per net in the paper


def layer_magnitudes(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """|w| over its layer's mean: the fused kernels' scale differs by layer (BN folded in)."""
    return [w.abs() / w.abs().mean().clamp_min(1e-12) for w in weights]


class WeightSparsityMethod(PruningMethod):
    """A method that zeroes weights of the fused convs (``weight_masks``), every channel
    kept: ``prune`` turns the supernet, in place, into its one-branch form, one conv + BN per
    block with the gates kept (``conv_bn_form``, its BN statistics measured on the sample
    inputs), and writes the zeros; the search stage saves that net, the fine-tune holds them."""

    weight_sparsity: ClassVar[bool] = True
    needs_inputs = True
    note: ClassVar[str] = ACCURACY_ONLY

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.costs = weight_costs(self.model.spec, self.budget.metric)  # refuses a latency budget
        self.measured: dict[str, float] = {}

    def select(self, inputs: torch.Tensor | None = None) -> tuple[Masks, list[torch.Tensor]]:
        ones = [torch.ones(lay.out_channels) for lay in self.model.spec.layers]
        return [o.bool() for o in ones], ones

    def weight_masks(self, deploy: RepNet) -> list[torch.Tensor]:
        """One keep-mask per block's fused conv weight, meeting the budget."""
        raise NotImplementedError

    @torch.no_grad()
    def write(self, masks: Masks, scores: list[torch.Tensor], inputs: torch.Tensor | None) -> None:
        deploy = conv_bn_form(self.model, inputs, inplace=True)
        for conv, mask in zip(block_convs(deploy), self.weight_masks(deploy)):
            conv.weight.mul_(mask.to(conv.weight))
        cost = sparse_cost(deploy, self.budget)
        self.measured = {"weight_density": density(deploy), f"sparse_{self.budget.metric}": cost,
                         "sparse_cost_vs_target": cost / self.budget.target}

    def metrics(self) -> dict[str, float]:
        return dict(self.measured)


@register_method("magnitude")
class Magnitude(WeightSparsityMethod):
    summary = ("unstructured: the smallest fused weights zeroed down to the budget, fine-tuned under the mask "
               "(accuracy only: no runtime here skips zeros)")

    def weight_masks(self, deploy: RepNet) -> list[torch.Tensor]:
        weights = [c.weight.detach() for c in block_convs(deploy)]
        return masks_by_cost(layer_magnitudes(weights), self.costs, to_remove(deploy, self.budget))


@register_method("admm-unstructured")
class ADMMUnstructured(Magnitude):
    summary = ("unstructured: progressive ADMM on the fused kernels while training, then magnitude "
               "(trains; accuracy only: no runtime here skips zeros)")
    trains = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rho = 1e-3 if self.strength is None else self.strength
        self.interval = max(1, self.updates_per_epoch // ADMM_PROJECTIONS_PER_EPOCH)
        self.ramp = max(1, self.updates_per_epoch * self.epochs // 2)  # the sparsity rises over half the updates
        self.Z: list[torch.Tensor] | None = None
        self.U: list[torch.Tensor] | None = None
        self.update = 0

    def kernels(self) -> list[torch.Tensor]:
        return [block.equivalent_kernel_bias()[0] for block in self.model.blocks]

    @torch.no_grad()
    def _project(self, kernels: list[torch.Tensor]) -> None:
        v = [k + u for k, u in zip(kernels, self.U)]
        remove = to_remove(self.model, self.budget) * min(1.0, self.update / self.ramp)
        self.Z = [vi * m for vi, m in zip(v, masks_by_cost(layer_magnitudes(v), self.costs, remove))]

    def penalty(self) -> torch.Tensor:
        kernels = self.kernels()
        if self.Z is None:
            self.U = [torch.zeros_like(k.detach()) for k in kernels]
            self._project([k.detach() for k in kernels])
        return self.rho / 2 * sum(((k - z + u) ** 2).sum() for k, z, u in zip(kernels, self.Z, self.U))

    @torch.no_grad()
    def after_step(self, update: int) -> None:
        self.update = update
        if update % self.interval == 0 and self.Z is not None:
            kernels = [k.detach() for k in self.kernels()]
            self._project(kernels)
            self.U = [u + k - z for u, k, z in zip(self.U, kernels, self.Z)]

    def metrics(self) -> dict[str, float]:
        if self.measured or self.Z is None:
            return super().metrics()
        return {"admm_z_density": sum(float((z != 0).sum()) for z in self.Z) / sum(z.numel() for z in self.Z)}

    def state_dict(self) -> dict[str, Any]:
        return {"Z": self.Z, "U": self.U, "update": self.update}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.Z, self.U, self.update = state.get("Z"), state.get("U"), state.get("update", 0)


def candidate_patterns(entries: int = PATTERN_ENTRIES) -> torch.Tensor:
    """Every 3x3 keep-pattern of ``entries`` entries that holds the centre: (count, 9) bool."""
    rows = []
    for chosen in itertools.combinations([i for i in range(9) if i != 4], entries - 1):
        row = torch.zeros(9, dtype=torch.bool)
        row[[4, *chosen]] = True
        rows.append(row)
    return torch.stack(rows)


@register_method("pattern")
class Pattern(WeightSparsityMethod):
    summary = ("unstructured: PatDNN kernel patterns (4 of 9 entries, 8 patterns) and connectivity pruning to the "
               "budget (accuracy only: no runtime here skips zeros)")

    def pattern_set(self, weights: list[torch.Tensor]) -> torch.Tensor:
        """The ``PATTERN_COUNT`` patterns most often best (largest kept energy) over the net's 3x3 kernels."""
        cands = candidate_patterns().float()
        counts = torch.zeros(len(cands))
        for w in weights:
            if w.shape[-2:] == (3, 3):
                best = (w.flatten(2) ** 2 @ cands.T).argmax(-1)
                counts += torch.bincount(best.flatten(), minlength=len(cands)).float()
        return candidate_patterns()[counts.topk(min(PATTERN_COUNT, len(cands))).indices]

    def weight_masks(self, deploy: RepNet) -> list[torch.Tensor]:
        weights = [c.weight.detach() for c in block_convs(deploy)]
        chosen = self.pattern_set(weights)
        patterned, kernel_scores, kernel_costs = [], [], []
        removed = 0.0
        for w, cost in zip(weights, self.costs):
            if w.shape[-2:] == (3, 3):
                pick = (w.flatten(2) ** 2 @ chosen.T.float()).argmax(-1)
                mask = chosen[pick].view_as(w)
            else:  # no pattern for other kernel sizes: connectivity pruning only
                mask = torch.ones_like(w, dtype=torch.bool)
            removed += cost * float((~mask).sum())
            kept = mask.flatten(2).sum(-1).float()
            patterned.append(mask)
            kernel_scores.append((w * mask).flatten(2).norm(dim=-1) / kept.sqrt())
            kernel_costs.append(kept * cost)
        kernel_scores = [s / s.mean().clamp_min(1e-12) for s in kernel_scores]
        connected = masks_by_cost(kernel_scores, kernel_costs, to_remove(deploy, self.budget) - removed)
        return [m & c[..., None, None] for m, c in zip(patterned, connected)]


__all__ = ["ADMMUnstructured", "Magnitude", "Pattern", "WeightSparsityMethod", "candidate_patterns"]
