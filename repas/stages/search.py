"""The search stage: a pruning method chooses the widths of the trained supernet under the
budget (``repas.stages.methods``), or, in error-tolerance mode, under a largest allowed
drop of the validation metric (``repas.stages.tolerance``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from repas import distributed
from repas.config import PipelineConfig
from repas.errors import RepasError
from repas.search import Budget, gate_widths, method_class, resolve_target
from repas.search.cost import cost, format_cost
from repas.search.weight_sparsity import density, sparse_cost
from repas.stages.common import (
    Resume,
    cost_model,
    model_facts,
    save_stage,
    stage_dir,
    warn,
)
from repas.stages.methods import method_search
from repas.stages.tolerance import tolerance_search_stage
from repas.stages.training import open_stage
from repas.supernet import RepNet
from repas.task_data import TaskData

log = logging.getLogger("repas.stages")
# a search whose gates end this far under the target collapsed
FAR_BELOW = 0.5


def search_budget(cfg: PipelineConfig, model: RepNet) -> Budget:
    s = cfg.search
    if s.int8_latency_table is not None and s.metric != "latency":
        raise RepasError("search.int8_latency_table prices a latency budget in float and int8: set "
                         "search.metric: latency (and search.latency_table: the float table)")
    fraction = None if s.target_abs is not None else s.target
    fn = cost_model(cfg, model.spec, s.metric)
    target = resolve_target(model.spec, s.metric, fraction=fraction, absolute=s.target_abs, model=fn)
    return Budget(model.spec, target, s.metric, s.alpha, fn)


def search_stage(cfg: PipelineConfig, source: str | Path | None = None, *, resume: Resume = False,
                 data: TaskData | None = None) -> Path:
    """Choose the widths of a (trained) supernet under the budget with ``search.method``."""
    if cfg.search.max_drop is not None and method_class(cfg.search.method).weight_sparsity:
        raise RepasError(f"search.max_drop shrinks channel widths round by round, and {cfg.search.method} keeps every "
                         "channel (it zeroes single weights): give it a macs or params target instead (--target 0.5)")
    if cfg.search.pte_latency is not None:
        raise RepasError("search.pte_latency is a budget 'repas pipeline' measures (it times the nets it chooses "
                         "from): run the pipeline, or set search.pte_latency: null and give --target")
    opened = open_stage(cfg, "search", source, cfg.search, resume, data)
    if opened is None:
        return stage_dir(cfg, "search")
    _, resume, model, data = opened
    if not any(g is not None for g in model.gate_modules()):
        raise RepasError(f"{model.spec.name} has no gated layer: search needs a supernet spec")
    if cfg.search.max_drop is not None:
        if distributed.is_distributed():
            raise RepasError("the error-tolerance search (search.max_drop) runs in one process: launch it without "
                             "torchrun")
        model, report, budget = tolerance_search_stage(cfg, model, data)
        return save_search(cfg, model, report, budget)
    budget = search_budget(cfg, model)
    log.info(f"search ({cfg.search.method}): target {budget.metric} {format_cost(budget.target, budget.metric)} "
             f"(dense {format_cost(float(budget.cost(model.spec.widths)), budget.metric)})")
    dense = model_facts(model)
    model, report = method_search(cfg, model, budget, resume, data)
    report["supernet"] = dense
    return save_search(cfg, model, report, budget)


def save_search(cfg: PipelineConfig, model: RepNet, report: dict[str, Any], budget: Budget) -> Path:
    """The report leads with the result: the searched widths and their cost (the supernet's
    own under ``supernet``), and warns where the search did not decide the widths."""
    widths = gate_widths(model)
    sparse = method_class(cfg.search.method).weight_sparsity
    searched = sparse_cost(model, budget) if sparse else float(budget.cost(widths))  # zeros skipped
    report.setdefault("supernet", model_facts(model))
    report.update({"widths": widths, "macs": float(cost(model.spec, widths, "macs")),
                   "params": float(cost(model.spec, widths, "params")), "method": cfg.search.method,
                   "target": budget.target, "metric": budget.metric,
                   f"searched_{budget.metric}": searched, "cost_vs_target": searched / budget.target})
    if sparse:
        report["weight_density"] = density(model)
    if cfg.search.max_drop is None:
        check_search(report, widths, searched, budget)
    return save_stage(model, stage_dir(cfg, "search"), report, cfg)


def check_search(report: dict[str, Any], widths: list[int], cost: float, budget: Budget) -> None:
    """Say so where the gates collapsed far under the target, or cut a layer to one channel
    (a search that ended above it, the method says so itself: ``PruningMethod.warnings``)."""
    ratio = cost / budget.target
    if ratio < FAR_BELOW:
        warn(report, f"the search collapsed to {ratio:.2f} x its target ({format_cost(cost, budget.metric)} "
                     f"{budget.metric}): lower search.alpha or search.gate_lr")
    thin = [i for i, (w, full) in enumerate(zip(widths, report["supernet"]["widths"])) if full > 1 and w <= 1]
    if thin:
        warn(report, f"layers {thin} were searched down to one channel: the net is nearly cut in two there; "
                     "lower search.alpha or raise the target")

