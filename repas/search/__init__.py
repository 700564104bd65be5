"""Search: cost models, the budget objective, the trainer, and subnet extraction."""

from repas.search.budget import Budget, resolve_target
from repas.search.cost import cost, min_cost, parse_quantity, spec_cost
from repas.search.extract import (
                                  extract_subnet,
                                  fit_masks_to_budget,
                                  gate_masks,
                                  gate_scores,
                                  gated_copy,
                                  round_masks,
                                  subnet_spec,
)
from repas.search.trainer import Trainer

__all__ = ["Budget", "Trainer", "cost", "extract_subnet", "fit_masks_to_budget", "gate_masks", "gate_scores",
           "gated_copy", "min_cost", "parse_quantity", "resolve_target", "round_masks", "spec_cost",
           "subnet_spec"]
