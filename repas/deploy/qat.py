"""int8 that keeps accuracy: quantization-aware training (PT2E) and better calibration.

Both use the XNNPACK quantizer configuration that export uses (symmetric per-channel
int8 weights, affine per-tensor int8 activations), so the model that trains or calibrates
here is the model that lowers to the .pte.

Quantization-aware training, in a plain loop::

    prepared = prepare_qat(fused, example)          # fake-quant graph, any batch size
    ...train prepared (observers on), then freeze_observers(prepared), train on...
    int8 = convert_qat(prepared)                    # PyTorch's int8 reference
    program, edge = lower_program(int8, (example,)) # the same numbers in ExecuTorch

``convert_qat`` keeps the quantization parameters that training settled on: nothing is
calibrated afresh, so the .pte is the net that was trained.

``repas.stages.qat.prepare_qat_multibranch`` trains a multi-branch RepNet instead (the
RepVGG authors' recipe): every forward computes each block's fused kernel from its branches
(differentiably, BatchNorm at its running statistics) and runs the fused net's fake-quant
graph on it, so the weights the int8 file gets are the ones the loss saw.

Post-training calibration with a chosen activation observer (``quantize_ptq``):

- ``minmax``: the observed range;
- ``histogram``: PyTorch's HistogramObserver, a greedy search for the range of least L2
  error (what ``get_symmetric_quantization_config`` uses, so the export's default);
- ``percentile``: the range between the ``100 - p`` and ``p`` percentiles (p = 99.99);
- ``mse``: a grid search over clipped ranges for the least expected squared error
  (rounding noise inside the range, clipping error outside), on the same histogram.

Weights are always per-channel min-max, as XNNPACK expects.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from repas.deploy.executorch_export import executorch_version
from repas.deploy.quiet import quiet_executorch
from repas.errors import RepasError

OBSERVERS = ("minmax", "histogram", "percentile", "mse")
DEFAULT_OBSERVER = "histogram"  # what export's quantize_pt2e calibrates with today
MAX_BATCH = 1 << 16  # the largest batch a dynamic-batch graph is exported for


def _pt2e() -> dict[str, Any]:
    """The PT2E names this module uses, imported quietly (ExecuTorch logs on import)."""
    executorch_version()  # a clear RepasError when ExecuTorch is absent
    with quiet_executorch():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization import pt2e
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
    return {"XNNPACKQuantizer": XNNPACKQuantizer, "config": get_symmetric_quantization_config,
            "prepare": prepare_pt2e, "prepare_qat": prepare_qat_pt2e, "convert": convert_pt2e, "pt2e": pt2e}


def check_observer(name: str) -> str:
    """``name`` if it is a known activation observer, else a one-line RepasError."""
    if name not in OBSERVERS:
        raise RepasError(f"unknown int8 observer {name!r}; expected one of {', '.join(OBSERVERS)}")
    return name


def _observer_classes() -> dict[str, type]:
    """Activation observer classes by name (built on first use: torchao is optional)."""
    pt2e = _pt2e()["pt2e"]
    HistogramObserver = pt2e.HistogramObserver  # noqa: N806 (a class)

    class PercentileObserver(HistogramObserver):
        """The range between the ``100 - percentile`` and ``percentile`` percentiles of
        everything observed (from HistogramObserver's 2048-bin histogram)."""

        def __init__(self, *args: Any, percentile: float = 99.99, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.percentile = percentile

        @torch.jit.export
        def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
            if self.min_val == float("inf") and self.max_val == float("-inf"):
                return super().calculate_qparams()  # uninitialized: the parent's warning and default
            cdf = torch.cumsum(self.histogram, 0) / self.histogram.sum().clamp_min(1)
            width = (self.max_val - self.min_val) / self.bins
            lo = int(torch.searchsorted(cdf, torch.tensor(1 - self.percentile / 100)))
            hi = int(torch.searchsorted(cdf, torch.tensor(self.percentile / 100)))
            new_min = self.min_val + width * lo
            new_max = self.min_val + width * min(hi + 1, self.bins)
            return self._calculate_qparams(new_min, new_max)

    class MSEObserver(HistogramObserver):
        """The clipped range of least expected squared error over the observed histogram:
        each candidate keeps the fraction ``a`` of the range on each side of zero
        (``a`` on a grid of ``steps`` values in (0, 1]); a value inside the range costs the
        rounding noise ``scale**2 / 12``, one outside it its distance to the range squared."""

        def __init__(self, *args: Any, steps: int = 200, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.steps = steps

        @torch.jit.export
        def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
            if self.min_val == float("inf") and self.max_val == float("-inf"):
                return super().calculate_qparams()
            width = (self.max_val - self.min_val) / self.bins
            centres = self.min_val + width * (torch.arange(self.bins, dtype=torch.float32) + 0.5)
            counts = self.histogram.float()
            levels = self.quant_max - self.quant_min
            lo0, hi0 = torch.clamp(self.min_val, max=0.0), torch.clamp(self.max_val, min=0.0)
            best, best_range = None, (lo0, hi0)
            for a in torch.linspace(1.0 / self.steps, 1.0, self.steps):
                lo, hi = lo0 * a, hi0 * a
                scale = (hi - lo) / levels
                clip = (centres - centres.clamp(lo, hi)) ** 2
                inside = (centres >= lo) & (centres <= hi)
                err = float((counts * torch.where(inside, scale ** 2 / 12, clip)).sum())
                if best is None or err < best:
                    best, best_range = err, (lo, hi)
            return self._calculate_qparams(*best_range)

    return {"minmax": pt2e.MinMaxObserver, "histogram": HistogramObserver, "percentile": PercentileObserver,
            "mse": MSEObserver}


def make_quantizer(observer: str = DEFAULT_OBSERVER, *, qat: bool = False, exact_weights: bool = True,
                   global_ranges: bool = False, **observer_args: Any) -> Any:  # noqa: ANN401 (an XNNPACKQuantizer)
    """The XNNPACK quantizer export uses (symmetric, per-channel), with activations
    observed by ``observer`` (post-training) or, with ``qat=True``, fake-quantized with
    moving-average min-max ranges (ExecuTorch's QAT configuration).

    ``exact_weights`` (QAT): fake-quantize each weight with the per-channel symmetric
    parameters that ``convert_pt2e`` will give it (the current weight's range, computed in
    Python), instead of the stock configuration's fused kernel. Measured on torch 2.14.1,
    that kernel (``torch.fused_moving_avg_obs_fake_quant``) quantizes a channel whose
    weights all share one sign asymmetrically (zero point 127, half the step) and skips
    the 2**-12 floor on the scale, while the converted net quantizes it symmetrically: the
    net that trained is not the net that ships. A 1-input-channel first layer (9 weights
    per filter) has such channels.

    ``global_ranges`` (QAT): activation ranges are the min and max over every batch seen until
    the observers freeze, instead of a moving average of each batch's. A net trained on small
    patches and shipped on whole images needs them: on ECBSR-M4C32 (SR x2, 32x32 patches) the
    moving average's ranges cost 0.48 dB in int8, global ones 0.24 dB."""
    check_observer(observer)
    names = _pt2e()
    config = names["config"](is_per_channel=True, is_qat=qat)
    if qat and exact_weights:
        pt2e = names["pt2e"]
        ctr = pt2e.FakeQuantize.with_args(observer=pt2e.MovingAveragePerChannelMinMaxObserver,
                                          averaging_constant=1.0, eps=2 ** -12)  # the current weight's range
        config = dataclasses.replace(config, weight=dataclasses.replace(config.weight, observer_or_fake_quant_ctr=ctr))
    if qat and global_ranges:
        pt2e = names["pt2e"]
        ctr = pt2e.FakeQuantize.with_args(observer=pt2e.MinMaxObserver, eps=2 ** -12)
        act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=ctr)
        config = dataclasses.replace(config, input_activation=act, output_activation=act)
    if not qat and (observer != DEFAULT_OBSERVER or observer_args):
        ctr = _observer_classes()[observer].with_args(eps=2 ** -12, **observer_args)  # eps as the quantizer's
        act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=ctr)
        config = dataclasses.replace(config, input_activation=act, output_activation=act)
    return names["XNNPACKQuantizer"]().set_global(config)


def _export_batched(model: nn.Module, example: torch.Tensor, *, free_size: bool = False) -> torch.fx.GraphModule:
    """``model`` captured with a free batch dimension (a graph traced at batch 1 would be
    specialised to batch 1), as a GraphModule. ``free_size``: height and width free too
    (``Dim.AUTO``: free where the model allows), so that a graph trained on patches runs,
    converts and lowers at another size (an SR or denoising net's export shape)."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=MAX_BATCH)
    if example.shape[0] < 2:  # a batch-1 example would specialise the graph to batch 1
        example = example.expand(2, *example.shape[1:]).contiguous()
    dims = {0: batch, **({2: Dim.AUTO, 3: Dim.AUTO} if free_size and example.dim() == 4 else {})}
    with quiet_executorch():
        return torch.export.export(model, (example,), dynamic_shapes=(dims,)).module()


def _batches(batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    seen = False
    for x in batches:
        seen = True
        yield x.detach().float()
    if not seen:
        raise RepasError("int8 calibration needs at least one batch of inputs")


@torch.no_grad()
def quantize_ptq(model: nn.Module, example: torch.Tensor, batches: Iterable[torch.Tensor],
                 observer: str = DEFAULT_OBSERVER, *, node_filter: Callable[[Any], bool] | None = None,
                 **observer_args: Any) -> torch.fx.GraphModule:
    """``model`` (fused, eval) in int8, its activation ranges calibrated by ``observer`` on
    ``batches`` (any batch size). The result is PyTorch's int8 reference and lowers to a
    .pte with ``repas.deploy.executorch_export.lower_program`` at a batch-1 example.
    ``node_filter``: quantize only the graph nodes it accepts (``repas.deploy.mixed_precision``)."""
    quantizer = make_quantizer(observer, **observer_args)
    if node_filter is not None:
        quantizer.set_filter_function(node_filter)
    names = _pt2e()
    model = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    prepared = names["prepare"](_export_batched(model, example), quantizer)
    for x in _batches(batches):
        prepared(x)
    with quiet_executorch():
        return names["convert"](prepared)


def prepare_qat(model_fused: nn.Module, example: torch.Tensor, *, exact_weights: bool = True,
                node_filter: Callable[[Any], bool] | None = None, free_size: bool = False) -> torch.fx.GraphModule:
    """The fake-quant training graph of a fused net (``repas.fuse``): PT2E QAT with the
    XNNPACK quantizer export uses, captured with a free batch dimension so that it trains
    in batches. ``.train()`` / ``.eval()`` work on it; observers start enabled (see
    ``freeze_observers``). The fused net has no BatchNorm, so there is none to fold.
    ``exact_weights=False``: ExecuTorch's stock QAT weight fake-quant (see ``make_quantizer``).
    ``node_filter``: fake-quantize only the graph nodes it accepts (layers kept float:
    ``repas.deploy.mixed_precision.layer_filter``), as ``quantize_ptq``. ``free_size``: the
    graph takes any height and width (an image-to-image net trains on patches and ships at
    its export shape; without it the converted graph only runs at ``example``'s size), and
    its activation ranges are global (``make_quantizer``'s ``global_ranges``)."""
    names = _pt2e()
    model = copy.deepcopy(model_fused).eval().to(memory_format=torch.contiguous_format)
    quantizer = make_quantizer(qat=True, exact_weights=exact_weights, global_ranges=free_size)
    if node_filter is not None:
        quantizer.set_filter_function(node_filter)
    prepared = names["prepare_qat"](_export_batched(model, example, free_size=free_size), quantizer)
    return names["pt2e"].allow_exported_model_train_eval(prepared)


def _fake_quant_modules(model: nn.Module) -> list[nn.Module]:
    base = _pt2e()["pt2e"].FakeQuantizeBase
    return [m for m in model.modules() if isinstance(m, base)]


def freeze_observers(prepared: nn.Module, frozen: bool = True) -> None:
    """Stop (or restart) the fake-quant modules' range observers: the quantization
    parameters stay as they are while the weights go on training."""
    pt2e = _pt2e()["pt2e"]
    prepared.apply(pt2e.disable_observer if frozen else pt2e.enable_observer)


def quantization_parameters(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(scale, zero point) of every fake-quant module of a prepared QAT graph, in order."""
    return [(m.scale.detach().clone(), m.zero_point.detach().clone()) for m in _fake_quant_modules(model)]


def convert_qat(prepared: nn.Module) -> torch.fx.GraphModule:
    """The int8 net (PyTorch's reference: quantize / dequantize around float ops) of a
    QAT-trained ``prepare_qat`` graph or ``repas.stages.qat.MultiBranchQAT``, with the quantization
    parameters training ended with (no calibration). ``prepared`` is left as it was (the
    conversion works on a copy), so training can go on."""
    names = _pt2e()
    # a multi-branch wrapper (repas.stages.qat.MultiBranchQAT) hands over its fused graph
    graph = prepared.fused_graph() if hasattr(prepared, "fused_graph") else copy.deepcopy(prepared)
    graph.eval()
    freeze_observers(graph)  # a call on the copy must not move its ranges
    with quiet_executorch():
        return names["convert"](graph)


__all__ = ["DEFAULT_OBSERVER", "OBSERVERS", "check_observer", "convert_qat", "freeze_observers", "make_quantizer",
           "prepare_qat", "quantization_parameters", "quantize_ptq"]
