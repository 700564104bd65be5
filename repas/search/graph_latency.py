"""Latency of a user's CNN (``repas.graph``) from a table keyed by its own conv shapes.

Every conv layer with a square kernel, one stride and "same" padding (dense or depthwise)
is a part: a table row at its input size, read at its current channel counts (each one
the fixed channels plus the groups that cut it, ``repas.graph.cost.Channels``). A
classifier's linear layer on pooled features is the table's head row at 1x1. A part's
output is a boundary (what the part, timed alone, pays at its ends: see
``repas.latency_table``). ``latency = overhead + row_scale x (rows - boundaries)``, both
fitted on whole nets (``calibrate``): the overhead holds everything else (pooling, adds,
grouped convs, attention) at a constant cost, and ``row_scale`` what a layer costs inside a
whole net beyond its time alone (its weights fall out of the caches between calls).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from repas.errors import RepasError
from repas.graph.cost import Channels, LayerCost
from repas.latency_table import DEPTHWISE, OVERHEAD_KEY, Key, LatencyTable, boundary_key, channel_values
from repas.search.latency import Width, _Surface, _value

HINT = "measure one for this model with 'repas profile' (same config), or bring one that covers it"


@dataclass
class GraphPart:
    """A timed part of a user model: its table key and channel counts."""

    name: str
    key: Key
    c_in: Channels
    c_out: Channels
    out_size: tuple[int, int]


def graph_parts(costs: Sequence[LayerCost]) -> list[GraphPart]:
    """The parts of a user model that a latency table times, in the model's order."""
    return [GraphPart(c.name, c.key, c.c_in, c.c_out, c.out_size) for c in costs if c.key is not None]


def _range(ch: Channels, sizes: Sequence[int]) -> tuple[int, int]:
    """The fewest and most channels ``ch`` can carry (each group from one channel to all)."""
    return max(1, round(ch.count([1] * len(sizes)))), round(ch.count(list(sizes)))


def graph_profile_grid(parts: Sequence[GraphPart], sizes: Sequence[int], divisor: int = 4, points: int = 8
                       ) -> tuple[dict[Key, tuple[list[int], list[int]]], dict[Key, list[int]]]:
    """The rows a table needs for ``parts`` (every c_in by every c_out of each key; a
    depthwise key's c_in = c_out) and the boundaries (each part's output), each over
    ``channel_values`` of the channel range (``points`` values or so: user layers are wide)."""
    grid: dict[Key, tuple[set[int], set[int]]] = {}
    joins: dict[Key, set[int]] = {}
    for p in parts:
        cins, couts = grid.setdefault(p.key, (set(), set()))
        outs = channel_values(*_range(p.c_out, sizes), divisor, points)
        cins |= set(outs if p.key[5] == DEPTHWISE and p.key[0] == "conv" else
                    channel_values(*_range(p.c_in, sizes), divisor, points))
        couts |= set(outs)
        if p.key[0] == "conv":
            joins.setdefault(boundary_key(*p.out_size), set()).update(outs)
    return {k: (sorted(a), sorted(b)) for k, (a, b) in grid.items()}, {k: sorted(v) for k, v in joins.items()}


def graph_rows(grid: dict[Key, tuple[list[int], list[int]]]) -> list[tuple[Key, int, int]]:
    """The table rows of a grid: the full c_in x c_out grid of each key, the diagonal of a
    depthwise one."""
    return [(key, ci, co) for key, (cins, couts) in grid.items() for ci in cins for co in couts
            if not (key[0] == "conv" and key[5] == DEPTHWISE) or ci == co]


class GraphLatencyModel:
    """Predicted latency (ms) of a gated user model at any group widths, from ``table``:
    ``overhead + row_scale x (sum of the parts' rows - sum of the boundaries')``
    (``repas.search.latency`` reads the rows; ``row_scale`` is the table's metadata, 1 if
    absent), differentiable in the widths. ``sizes``: each group's full width."""

    metric = "latency"

    def __init__(self, table: LatencyTable, costs: Sequence[LayerCost], sizes: Sequence[int],
                 source: str = "the latency table", name: str = "the model") -> None:
        self.table, self.sizes = table, list(sizes)
        self.parts = graph_parts(costs)
        if not self.parts:
            raise RepasError(f"{name} has no layer a latency table can time (a conv with a square kernel, one "
                             "stride and 'same' padding, or a linear classifier): budget it in macs or params")
        grid, joins = graph_profile_grid(self.parts, self.sizes, 10 ** 9)  # only the ranges matter here
        self._surface = _Surface(table, grid, joins, source, name, HINT)
        self.overhead = table.overhead
        self.row_scale = float(table.meta.get("row_scale", "1") or 1)

    @classmethod
    def load(cls, path: str | Path, costs: Sequence[LayerCost], sizes: Sequence[int], name: str = "the model"
             ) -> GraphLatencyModel:
        return cls(LatencyTable.load(path), costs, sizes, str(path), name)

    def __call__(self, widths: Sequence[Width]) -> torch.Tensor | float:
        if len(widths) != len(self.sizes):
            raise ValueError(f"{len(widths)} widths for {len(self.sizes)} channel groups")
        rows, slowest = self.rows(widths)
        total = self.overhead + self.row_scale * rows
        return total if _value(total) >= _value(slowest) else slowest

    def rows(self, widths: Sequence[Width]) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """The parts' rows less the boundaries at ``widths``, and the slowest part's row."""
        total: torch.Tensor | float = 0.0
        slowest: torch.Tensor | float = 0.0
        for p in self.parts:
            c_out = p.c_out.count(list(widths))
            part = self._surface.part(p.key, p.c_in.count(list(widths)), c_out)
            total = total + part
            slowest = part if _value(part) > _value(slowest) else slowest
            if p.key[0] == "conv":
                total = total - self._surface.boundary(boundary_key(*p.out_size), c_out)
        return total, slowest


def calibrate(table: LatencyTable, costs: Sequence[LayerCost], sizes: Sequence[int],
              nets: Sequence[tuple[Sequence[int], float]]) -> LatencyTable:
    """Set ``table``'s overhead and ``row_scale`` (metadata) from whole nets measured at
    group widths (``nets``: widths, ms): the least-squares line ``ms = overhead + row_scale x
    rows`` (rows less boundaries, interpolated). The overhead is what the rows do not see
    (pooling, adds, the layers no row times); the scale, what a layer costs inside a net
    beyond its time alone: a whole net's weights do not stay in the caches between calls as
    one layer's do (1.2 to 1.6 on a ResNet-18 here, results.md). One net sets the overhead
    alone (scale 1)."""
    table.entries.pop(OVERHEAD_KEY, None)
    table.add(OVERHEAD_KEY, 0, 0, 0.0)
    model = GraphLatencyModel(table, costs, sizes)
    sums = [float(model.rows(widths)[0]) for widths, _ in nets]
    measured = [float(ms) for _, ms in nets]
    scale = 1.0
    if len(nets) > 1 and max(sums) > min(sums):
        scale = max(float(np.polyfit(sums, measured, 1)[0]), 0.5)  # a slope under 0.5 is noise
    table.entries.pop(OVERHEAD_KEY)
    table.add(OVERHEAD_KEY, 0, 0, float(np.mean([m - scale * r for m, r in zip(measured, sums)])))
    table.meta.update({"row_scale": f"{scale:.6g}", "whole_nets_ms": " ".join(f"{m:.6g}" for m in measured)})
    return table
