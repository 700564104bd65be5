"""The extract stage: the searched gates become widths (rounded, fitted to the target) and
a physically smaller net with inherited weights, equal to the gated supernet."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from repas.config import PipelineConfig
from repas.errors import RepasError
from repas.search import Budget, extract_subnet, fit_gates, gate_widths, gated_copy
from repas.search.cost import format_cost
from repas.search.exact_allocation import FastestPrecision
from repas.search.weight_sparsity import density, sparse_cost
from repas.stages.common import (
    check_input,
    cost_model,
    model_facts,
    read_report,
    setup,
    source_dir,
    stage_dir,
    warn,
    width_step,
    write_stage,
)
from repas.stages.search import search_budget
from repas.supernet import RepNet, load_model
from repas.supernet.gating import gate_masks, was_searched

log = logging.getLogger("repas.stages")


def load_searched(src: Path) -> RepNet:
    """The searched supernet in ``src``; an error for a net that was never searched."""
    model = load_model(src).eval()
    if not any(g is not None for g in model.gate_modules()):
        raise RepasError(f"{src} holds {model.spec.name}, which has no gates: extract reads a searched supernet "
                         "(the search stage's output)")
    stage = read_report(src).get("stage") if (src / "report.json").exists() else None
    if stage in ("train", "finetune") or (stage is None and not was_searched(model)):
        raise RepasError(f"{src} was never searched (it is the output of the {stage or 'train'} stage, every gate "
                         "still on): run 'repas search' first and extract from its output")
    return model


def extract_stage(cfg: PipelineConfig, source: str | Path | None = None, *, target_from_search: bool = True) -> Path:
    """Gates -> widths (rounded, fitted to the target) -> a smaller net with inherited weights.

    The target is the one the search ran with (its report.json), unless
    ``target_from_search`` is False or the source has no report: then the config's."""
    setup(cfg)
    src = source_dir(cfg, "extract", source)
    model = load_searched(src)
    threshold_widths = gate_widths(model)
    searched = read_report(src) if (src / "report.json").exists() else {}
    if target_from_search and "target" in searched:
        metric = searched["metric"]
        budget = Budget(model.spec, float(searched["target"]), metric, cfg.search.alpha,
                        cost_model(cfg, model.spec, metric))
    else:
        budget = search_budget(cfg, model)
    step = width_step(cfg, budget.model)
    sparse = searched.get("weight_density") is not None  # zeros of single weights, every channel kept: no fit
    masks = gate_masks(model) if sparse else fit_gates(model, budget, step=step, tolerance=cfg.extract.tolerance,
                                                       fit=cfg.extract.fit)
    sub, diff = extract_checked(model, masks)
    cost = sparse_cost(sub, budget) if sparse else float(budget.cost(sub.spec.widths))
    report = {"stage": "extract", **model_facts(sub), "method": searched.get("method"),
              "threshold_widths": threshold_widths, "target": budget.target, "metric": budget.metric,
              "cost_vs_target": cost / budget.target, f"predicted_{budget.metric}": cost,
              "max_rel_diff_vs_gated_supernet": diff, "round_to": step,
              "warnings": list(searched.get("warnings", []))}
    if sparse:
        report["weight_density"] = density(sub)
    if isinstance(budget.model, FastestPrecision):  # width and precision searched together
        report["precision"] = budget.model.precision_of(sub.spec.widths)
    thin = [i for i, (w, lay) in enumerate(zip(sub.spec.widths, model.spec.layers))
            if lay.gated and lay.out_channels > 1 and w <= 1]
    if thin:
        warn(report, f"extraction left layers {thin} at one channel: the net is nearly cut in two there; raise "
                     "the target or search with a smaller search.alpha")
    log.info(f"extract: widths {sub.spec.widths}, {budget.metric} {format_cost(cost, budget.metric)} = "
             f"{cost / budget.target:.3f} x target")
    return write_stage(sub, stage_dir(cfg, "extract"), report, cfg)


def extract_checked(model: RepNet, masks: list[torch.Tensor]) -> tuple[RepNet, float]:
    """The extracted net and its max abs difference from the gated supernet, relative to
    the output's largest value (an error above 1e-5): channels a search switched off and
    an allocation keeps can make outputs of 1e6, where float32 rounds at 1e-1."""
    sub = extract_subnet(model, masks)
    x = check_input(model.spec)
    with torch.no_grad():
        ref = gated_copy(model, masks).eval()(x)
        diff = float((sub(x) - ref).abs().max() / ref.abs().max().clamp_min(1.0))
    if diff > 1e-5:
        raise RepasError(f"extracted net differs from the gated supernet by {diff:.2e} (relative): please report "
                         "this bug")
    return sub, diff
