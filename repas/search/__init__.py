"""Search: cost models (MACs, params, measured latency), the budget objective, the trainer,
and subnet extraction."""

from repas.search.budget import Budget, resolve_target
from repas.search.cost import analytic_cost, cost, format_cost, min_cost, parse_quantity, spec_cost
from repas.search.extract import (
    allocate_masks,
    extract_subnet,
    fit_masks_to_budget,
    gate_masks,
    gate_scores,
    gated_copy,
    round_masks,
    subnet_spec,
    threshold_masks,
)
from repas.search.latency import LatencyModel, parse_latency
from repas.search.trainer import Trainer

__all__ = ["Budget", "LatencyModel", "Trainer", "allocate_masks", "analytic_cost", "cost", "extract_subnet",
           "fit_masks_to_budget", "format_cost", "gate_masks", "gate_scores", "gated_copy", "min_cost",
           "parse_latency", "parse_quantity", "resolve_target", "round_masks", "spec_cost", "subnet_spec",
           "threshold_masks"]
