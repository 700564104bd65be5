"""Running a registered pruning method in the search stage. PaS learns its gates in
training epochs; a method that trains (slimming, ADMM ...) trains with its regulariser and
then writes its masks into the gates; a one-shot method (uniform, L1 ...) writes its masks
at once. The extract stage reads the gates either way."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch

from repas.config import PipelineConfig
from repas.search import Budget, PruningMethod, method_class
from repas.stages.common import Resume, environment, model_facts, warn, width_step
from repas.stages.training import run_training
from repas.supernet import RepNet
from repas.task_data import TaskData

log = logging.getLogger("repas.stages")


def make_method(cfg: PipelineConfig, model: RepNet, budget: Budget, data: TaskData) -> PruningMethod:
    """The configured method attached to ``model`` (its gates frozen unless it learns them)."""
    s = cfg.search
    return method_class(s.method)(model, budget, step=width_step(cfg, budget.model), tolerance=cfg.extract.tolerance,
                                  strength=s.strength, updates_per_epoch=len(data.train_loader(s)), epochs=s.epochs)


def sample_inputs(model: RepNet, data: TaskData, count: int = 256) -> torch.Tensor:
    """``count`` training inputs for a method that looks at feature maps or outputs (LASSO,
    EagleEye); for an image-to-image model (SR, denoising), one 48x48 crop per 16 images'
    worth of pixels."""
    image = model.spec.task != "classification"
    size = (48, 48) if image else model.spec.input_size
    n = max(16, count // 16) if image else count
    return torch.cat(data.calibration_inputs((1, model.spec.in_channels, *size), n))


def method_search(cfg: PipelineConfig, model: RepNet, budget: Budget, resume: Resume, data: TaskData
                  ) -> tuple[RepNet, dict[str, Any]]:
    """Run the configured method on ``model``: train with its hooks if it trains, then
    (unless it learns its gates, as PaS does) write its masks into the gates."""
    s = cfg.search
    method = make_method(cfg, model, budget, data)
    started = time.perf_counter()
    report: dict[str, Any] = {"stage": "search"}
    if method.trains:
        model, report = run_training(cfg, "search", model, s, resume, data=data, terms=[method],
                                     gate_lr=s.gate_lr if method.learns_gates else None)
        if method.learns_gates:
            report["gate_lr"] = s.gate_lr or method.default_gate_lr()  # unset: scaled to the gated channels
        for message in method.warnings():
            warn(report, message)
    if not method.learns_gates:
        widths = method.prune(sample_inputs(model, data, method.input_count) if method.needs_inputs else None)
        log.info(f"search ({s.method}): widths {widths}" + (f", precision {method.precision}"
                                                            if method.precision else ""))
        if method.precision:
            report["precision"] = method.precision
        if method.metrics():  # what a one-shot method measured of itself (cap: its seconds)
            report["method_metrics"] = method.metrics()
        if method.note:
            warn(report, f"{s.method}: {method.note}")
    if not method.trains:
        # the recipe, so that --resume auto knows this search is complete (a training one records it too)
        report.update({**model_facts(model), "seconds": time.perf_counter() - started, "environment": environment(),
                       "config": dataclasses.asdict(s)})
    return model, report
