"""ResRep (Ding et al., "ResRep: Lossless CNN Pruning via Decoupling Remembering and
Forgetting", ICCV 2021) as a registered method.

The paper: a compactor (a 1x1 conv, identity at the start) after each conv-BN; the task
gradient of the compactor rows chosen for pruning (smallest norms, more of them as training
goes) is zeroed and a lasso gradient drives them to zero ("forgetting"), while the convs
keep "remembering"; then the compactors fold into the convs and the zero rows are cut.
repas does the same on each gated block (the compactor sits after the branches' sum,
before the activation). It differs in three places: the mask grows to the budget (cost
under the latency / MACs model, one global ranking of row norms over each layer's mean)
over the first half of the search's updates; the lasso acts on the masked rows only, with
a step that empties a row of norm 1 in a quarter of the updates (the paper applies a small
lasso to every row over a far longer schedule); and the folded net is the one-branch conv +
BN form (``repas.supernet.conv_bn_form``), whose BatchNorm then fine-tunes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from repas.errors import RepasError
from repas.search.allocation import full_scores, global_masks, layer_normalized
from repas.search.methods.registry import Masks, PruningMethod, register_method
from repas.supernet import RepNet, apply_masks, conv_bn_form

MASK_UPDATES_PER_EPOCH = 4


class Compactor(nn.Module):
    """A 1x1 conv with no bias, identity at the start. Its matrix is held flat (one
    dimension) so that the trainer does not decay it: ResRep trains compactors without
    weight decay."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(torch.eye(channels).flatten())

    def matrix(self) -> torch.Tensor:
        return self.weight.view(self.channels, self.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.matrix()[:, :, None, None])


class Compacted(nn.Module):
    """A block's activation with a compactor before it."""

    def __init__(self, compactor: Compactor, act: nn.Module) -> None:
        super().__init__()
        self.compactor, self.act = compactor, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.compactor(x))


@register_method("resrep")
class ResRep(PruningMethod):
    summary = ("ResRep: compactors after the gated blocks; the rows chosen by norm lose their task gradient and "
               "shrink to zero, then fold into the convs (trains)")
    trains = True
    needs_inputs = True  # the folded net's BatchNorm statistics

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gated = [i for i, g in enumerate(self.model.gate_modules()) if g is not None]
        thick = [i for i in self.gated if self.model.blocks[i].groups != 1]
        if thick:
            raise RepasError(f"resrep: layers {thick} are grouped (depthwise) convs, and a compactor mixes channels "
                             "that a grouped conv keeps apart; choose another method for this space")
        self.total = max(1, self.updates_per_epoch * self.epochs)
        self.interval = max(1, self.updates_per_epoch // MASK_UPDATES_PER_EPOCH)
        self.shrink = 4.0 / self.total if self.strength is None else self.strength  # lasso step per update
        self.compactors: dict[int, Compactor] = {}
        for i in self.gated:
            block = self.model.blocks[i]
            self.compactors[i] = Compactor(block.out_channels).to(next(self.model.parameters()))
            block.act = Compacted(self.compactors[i], block.act)
            self.compactors[i].weight.register_hook(self._reroute(i))
        self.masks: Masks | None = None  # channels being forgotten: False

    # ---- training -------------------------------------------------------------------
    def _reroute(self, i: int) -> Any:  # noqa: ANN401 (a tensor hook)
        def hook(grad: torch.Tensor) -> torch.Tensor:
            if self.masks is None:
                return grad
            keep = self.masks[i].to(grad)
            return (grad.view(keep.numel(), -1) * keep[:, None]).flatten()  # no task gradient on forgotten rows
        return hook

    def row_norms(self) -> list[torch.Tensor]:
        return [self.compactors[i].matrix().detach().norm(dim=1) if i in self.compactors else None
                for i in range(len(self.model.blocks))]

    def _masks_at(self, fraction: float) -> Masks:
        """The rows kept when the cost has come down ``fraction`` of the way to the target."""
        dense = float(self.budget.cost(self.model.spec.widths))
        target = dense - (dense - self.budget.target) * fraction
        scores = full_scores(self.model.spec, layer_normalized(self.row_norms()))
        budget = dataclasses.replace(self.budget, target=target)
        return global_masks(self.model.spec, scores, budget, step=self.step, tolerance=self.tolerance)

    @torch.no_grad()
    def after_step(self, update: int) -> None:
        if update % self.interval == 0:
            self.masks = self._masks_at(min(1.0, update / max(1, self.total // 2)))
        if self.masks is None:
            return
        for i, compactor in self.compactors.items():
            rows = compactor.matrix()
            forgotten = ~self.masks[i].to(rows.device)
            norms = rows[forgotten].norm(dim=1, keepdim=True)
            rows[forgotten] *= (1 - self.shrink / norms.clamp_min(1e-12)).clamp_min(0)  # proximal group lasso

    def metrics(self) -> dict[str, float]:
        if self.masks is None:
            return {}
        gone = [float(self.compactors[i].matrix().detach()[~self.masks[i]].norm(dim=1).max())
                for i in self.compactors if (~self.masks[i]).any()]
        return {"forgotten_rows": float(sum(int((~self.masks[i]).sum()) for i in self.compactors)),
                "largest_forgotten_norm": max(gone, default=0.0)}

    def state_dict(self) -> dict[str, Any]:
        return {"masks": self.masks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks = state.get("masks")

    # ---- the decision ----------------------------------------------------------------
    def select(self, inputs: torch.Tensor | None = None) -> tuple[Masks, list[torch.Tensor]]:
        scores = full_scores(self.model.spec, layer_normalized(self.row_norms()))
        return global_masks(self.model.spec, scores, self.budget, step=self.step, tolerance=self.tolerance), scores

    def folded(self, inputs: torch.Tensor | None = None) -> RepNet:
        """The net with every compactor folded into its block's conv (one conv + BN per
        block, gates as they are): equal to the compacted net in eval mode."""
        mix = [self.compactors[i].matrix().detach() if i in self.compactors else None
               for i in range(len(self.model.blocks))]
        plain = self.model  # its activations without the compactors while it is copied
        acts = {i: plain.blocks[i].act for i in self.compactors}
        try:
            for i in self.compactors:
                plain.blocks[i].act = acts[i].act
            return conv_bn_form(plain, inputs, mix=mix)
        finally:
            for i in self.compactors:
                plain.blocks[i].act = acts[i]

    @torch.no_grad()
    def write(self, masks: Masks, scores: list[torch.Tensor], inputs: torch.Tensor | None) -> None:
        """Fold the compactors into the net (in place: it becomes the one-branch conv + BN
        form), then write the masks into its gates."""
        mix = [self.compactors[i].matrix().detach() if i in self.compactors else None
               for i in range(len(self.model.blocks))]
        for i in self.compactors:
            self.model.blocks[i].act = self.model.blocks[i].act.act
        conv_bn_form(self.model, inputs, mix=mix, inplace=True)
        self.compactors = {}
        apply_masks(self.model, masks, scores)

__all__ = ["Compacted", "Compactor", "ResRep"]
