"""The pruning-method interface and the registry every method is found in.

A method is one small class: built on a gated supernet and a budget, it offers the hooks
a training loop calls (``penalty()`` added to the loss, ``after_step()`` after each
optimizer step) and the decision at the end (``select()``: one mask per layer meeting the
budget). ``prune()`` writes that decision into the gates; ``extract()`` then cuts the
physically smaller net. Register a new one with ``@register_method("name")``: the CLI's
``--method``, the config and ``create_method`` find it by that name, with no other edit.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch

from repas.errors import RepasError
from repas.graph import GatedModel
from repas.search.budget import Budget, resolve_target
from repas.search.cost import CostFn
from repas.search.exact_allocation import FastestPrecision
from repas.search.latency import LatencyModel
from repas.search.prunable import cost_function, extract_model
from repas.supernet.gating import apply_masks, gated_channels
from repas.supernet.net import RepNet

Masks = list[torch.Tensor]
M = TypeVar("M", bound="type[PruningMethod]")
_METHODS: dict[str, type[PruningMethod]] = {}
GATE_LR_PER_CHANNEL = 0.05 / 272


class PruningMethod:
    """Decides which channels of ``model`` stay for ``budget``.

    Class attributes say how a method is run: ``trains`` (it needs training epochs with its
    hooks before it decides; otherwise it prunes the trained net in one shot),
    ``learns_gates`` (its gates are trained by the loss, as in PaS; otherwise they stay
    frozen until ``prune()`` writes the masks), ``needs_inputs`` (``select`` samples
    feature maps from a batch of training inputs). ``step`` rounds widths to a multiple,
    ``tolerance`` is the band under the target the cost must land in."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    trains: ClassVar[bool] = False
    learns_gates: ClassVar[bool] = False
    needs_inputs: ClassVar[bool] = False
    any_model: ClassVar[bool] = False  # it also prunes a user's CNN (a repas.graph.GatedModel)
    input_count: ClassVar[int] = 256  # training images ``select`` is given, when it needs inputs
    # it zeroes single weights of the fused convs, every channel kept (repas.search.methods.unstructured)
    weight_sparsity: ClassVar[bool] = False
    note: ClassVar[str] = ""  # what the search report must say of every net this method makes

    def __init__(self, model: RepNet | GatedModel, budget: Budget, *, step: int = 1, tolerance: float = 0.03,
                 strength: float | None = None, updates_per_epoch: int = 1, epochs: int = 1) -> None:
        _require_gates(model, self.name)
        if isinstance(model, GatedModel) and not self.any_model:
            able = ", ".join(n for n in list_methods() if _METHODS[n].any_model)
            raise RepasError(f"method {self.name} reads the blocks of a repas supernet and cannot prune "
                             f"{model.spec.name} yet; methods for any CNN: {able}")
        m = budget.model
        if isinstance(m, LatencyModel) and len(m.precisions) > 1 and m.precision is None:
            # float and int8 tables and no precision fixed per layer: every candidate is priced
            # with each layer in its fastest precision, which ``precision`` records for the widths chosen
            budget = dataclasses.replace(budget, model=FastestPrecision(budget.model))
        self.model, self.budget = model, budget
        self.precision: list[str] | None = None
        self.step, self.tolerance, self.strength = step, tolerance, strength
        self.updates_per_epoch, self.epochs = max(1, updates_per_epoch), max(1, epochs)
        model.freeze_gates(not self.learns_gates)

    # ---- hooks for the training loop -------------------------------------------------
    def penalty(self) -> torch.Tensor:
        """A term to add to the task loss (zero for methods that only prune)."""
        return torch.zeros(())

    def after_step(self, update: int) -> None:
        """Called after optimizer step number ``update`` (counted from 1)."""

    def metrics(self) -> dict[str, float]:
        """Numbers worth logging once an epoch."""
        return {}

    def warnings(self) -> list[str]:
        """What makes this search's result suspect, each in one sentence (after training)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs besides the model's and optimizers' state."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def default_gate_lr(self) -> float:
        """The gates' lr when ``search.gate_lr`` is unset: 0.05 per 272 gated channels (the
        demo net's). The budget's pull on each gate falls as 1/channels, so the lr that
        keeps a net's gates on their budget grows with the count: measured, 0.05 for
        Fashion-MNIST's 272, 0.3 for RepVGG-A0's 1,664, 0.5 for ResNet-18's 2,880."""
        return GATE_LR_PER_CHANNEL * gated_channels(self.model)

    # ---- the decision ----------------------------------------------------------------
    def select(self, inputs: torch.Tensor | None = None) -> tuple[Masks, list[torch.Tensor]]:
        """One mask per layer meeting the budget, and the scores that rank each layer's
        channels (a later re-fit keeps that ranking)."""
        raise NotImplementedError

    def prune(self, inputs: torch.Tensor | None = None) -> list[int]:
        """Write the selected masks into the gates (frozen); returns the widths."""
        if self.needs_inputs and inputs is None:
            raise RepasError(f"method {self.name} samples feature maps: pass inputs (a batch of training images)")
        self.model.eval()
        masks, scores = self.select(inputs)
        self.write(masks, scores, inputs)
        widths = [int(m.sum()) for m in masks]
        if isinstance(self.budget.model, FastestPrecision):
            self.precision = self.budget.model.precision_of(widths)
        return widths

    def write(self, masks: Masks, scores: list[torch.Tensor], inputs: torch.Tensor | None) -> None:
        """Write the decision into the model: the masks into its gates (a method that also
        changes the weights, as ResRep folds its compactors, does that here first)."""
        apply_masks(self.model, masks, scores)

    def extract(self, inputs: torch.Tensor | None = None) -> torch.nn.Module:
        """Prune, then cut the physically smaller net (no gates), equal to the gated one: a
        RepNet, or for a ``GatedModel`` the user's own model class, smaller."""
        self.prune(inputs)
        return extract_model(self.model)


def _require_gates(model: RepNet | GatedModel, method: str) -> None:
    if not any(g is not None for g in model.gate_modules()):
        raise RepasError(f"{model.spec.name} has no gated layer: method {method} needs a supernet "
                         "(repas.create_model(name, gated=True))")


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: make a PruningMethod subclass available under ``name``."""
    def wrap(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, PruningMethod)):
            raise TypeError(f"@register_method({name!r}) decorates a PruningMethod subclass, not {cls!r}")
        cls.name = name
        _METHODS[name] = cls
        return cls
    return wrap


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_METHODS)


def method_class(name: str) -> type[PruningMethod]:
    """The class registered as ``name``; a clear error (with the nearest name) otherwise."""
    if name not in _METHODS:
        near = difflib.get_close_matches(str(name), list(_METHODS), n=1)
        raise RepasError(f"pruning method {name!r} is unknown" + (f" (did you mean {near[0]!r}?)" if near else "")
                         + f"; registered: {', '.join(list_methods())}")
    return _METHODS[name]


def create_method(name: str, model: RepNet | GatedModel, budget: Budget | None = None, *, target: float | str = 0.5,
                  metric: str = "macs", alpha: float = 5.0, cost: CostFn | None = None,
                  **options: Any) -> PruningMethod:
    """Attach method ``name`` to a gated ``model`` (a supernet, or any CNN wrapped in a
    ``repas.graph.GatedModel``). The budget is ``budget``, or ``target``
    (a fraction of the dense cost such as 0.5, or an absolute '2.5M' / '1.5ms') in ``metric``,
    costed by ``cost`` (default: the model's MACs or params; a latency budget needs a latency
    model: a ``LatencyModel``, or a user model's ``GraphLatencyModel``). ``options``: step,
    tolerance, strength, updates_per_epoch, epochs."""
    cls = method_class(name)
    _require_gates(model, name)
    if budget is None:
        fraction = target if isinstance(target, float | int) and 0 < float(target) <= 1 else None
        absolute = None if fraction is not None else target
        fn = cost or (None if metric == "latency" else cost_function(model, metric))
        target_value = resolve_target(model.spec, metric, fraction=fraction, absolute=absolute, model=fn)
        budget = Budget(model.spec, target_value, metric, alpha, fn)
    return cls(model, budget, **options)
