"""Search: cost models (MACs, params, measured latency), the budget objective, the pruning
methods and the allocation helpers they share, and subnet extraction."""

from repas.search.allocation import (
    allocate_masks,
    fit_gates,
    fit_masks_to_budget,
    global_masks,
    round_masks,
    round_width,
    threshold_masks,
    uniform_masks,
)
from repas.search.budget import Budget, resolve_target
from repas.search.cost import analytic_cost, cost, format_cost, min_cost, parse_quantity, spec_cost
from repas.search.extract import extract_subnet, subnet_spec
from repas.search.latency import LatencyModel, parse_latency
from repas.search.methods import PruningMethod, create_method, list_methods, method_class, register_method
from repas.supernet.gating import apply_masks, gate_masks, gate_scores, gate_widths, gated_copy

__all__ = ["Budget", "LatencyModel", "PruningMethod", "allocate_masks", "analytic_cost", "apply_masks", "cost",
           "create_method", "extract_subnet", "fit_gates", "fit_masks_to_budget", "format_cost", "gate_masks",
           "gate_scores", "gate_widths", "gated_copy", "global_masks", "list_methods", "method_class", "min_cost",
           "parse_latency", "parse_quantity", "register_method", "resolve_target", "round_masks", "round_width",
           "spec_cost", "subnet_spec", "threshold_masks", "uniform_masks"]
