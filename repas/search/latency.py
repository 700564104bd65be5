"""The latency model: a measured table, interpolated, as a cost differentiable in the widths.

``latency(widths) = overhead + sum over parts of table(key, c_in, c_out)``, where each part
(a fused layer, the head or the SR tail) is read off its table rows by bilinear
interpolation in (c_in, c_out). Widths may be the gates' straight-through counts, so the
gradient reaches the gates of both the layer and its producer; at the grid's points
(multiples of the table's divisor) the prediction is the measured value itself.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from repas.errors import RepasError
from repas.latency_table import Key, LatencyTable, describe_key, net_parts, profile_grid
from repas.spec import ArchSpec

Width = torch.Tensor | int | float


class LatencyModel:
    """Predicted whole-net latency (ms) of ``spec`` at any widths, from ``table``."""

    metric = "latency"

    def __init__(self, table: LatencyTable, spec: ArchSpec, source: str = "the latency table") -> None:
        self.table, self.spec = table, spec
        self.overhead = table.overhead
        self.divisor = int(table.meta.get("divisor", "1") or 1)
        self._grids: dict[Key, tuple[list[int], list[int], list[list[float]]]] = {}
        hint = "measure one for this spec with 'repas profile' (same config), or bring one that covers it"
        for key, (cins, couts) in profile_grid(spec, 10 ** 9).items():  # the ranges the widths can span
            rows = table.entries.get(key)
            if not rows:
                raise RepasError(f"{source} has no rows for {describe_key(key)}: {hint}")
            xs, ys = sorted({ci for ci, _ in rows}), sorted({co for _, co in rows})
            if xs[0] > cins[0] or xs[-1] < cins[-1] or ys[0] > couts[0] or ys[-1] < couts[-1]:
                raise RepasError(f"{source}: {describe_key(key)} is measured for {xs[0]}..{xs[-1]} -> "
                                 f"{ys[0]}..{ys[-1]} channels, but {spec.name} needs {cins[0]}..{cins[-1]} -> "
                                 f"{couts[0]}..{couts[-1]}: {hint}")
            missing = [(x, y) for x in xs for y in ys if (x, y) not in rows]
            if missing:
                raise RepasError(f"{source}: {describe_key(key)} lacks {len(missing)} grid points, e.g. "
                                 f"{missing[0][0]} -> {missing[0][1]} channels; every c_in of a key needs "
                                 "every c_out for interpolation")
            self._grids[key] = (xs, ys, [[rows[(x, y)] for y in ys] for x in xs])

    @classmethod
    def load(cls, path: str | Path, spec: ArchSpec) -> LatencyModel:
        return cls(LatencyTable.load(path), spec, str(path))

    def part(self, key: Key, c_in: Width, c_out: Width) -> torch.Tensor | float:
        """One part's latency by bilinear interpolation (exact at grid points)."""
        xs, ys, z = self._grids[key]
        i, tx = _cell(xs, c_in)
        j, ty = _cell(ys, c_out)
        i1, j1 = min(i + 1, len(xs) - 1), min(j + 1, len(ys) - 1)
        return ((1 - tx) * ((1 - ty) * z[i][j] + ty * z[i][j1])
                + tx * ((1 - ty) * z[i1][j] + ty * z[i1][j1]))

    def parts(self, widths: Sequence[Width]) -> list[float]:
        """Each part's predicted latency (layers, then the head or SR tail), in ms."""
        return [float(self.part(*p)) for p in net_parts(self.spec, widths)]

    def __call__(self, widths: Sequence[Width]) -> torch.Tensor | float:
        if len(widths) != len(self.spec.layers):
            raise ValueError(f"{len(widths)} widths for {len(self.spec.layers)} layers")
        total: torch.Tensor | float = self.overhead
        for p in net_parts(self.spec, widths):
            total = total + self.part(*p)
        return total


def _cell(axis: list[int], v: Width) -> tuple[int, Width]:
    """The grid cell holding ``v`` and the position in it (0..1), a tensor where ``v`` is one."""
    if len(axis) == 1:
        return 0, 0.0
    value = float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
    i = min(max(bisect.bisect_right(axis, value) - 1, 0), len(axis) - 2)
    return i, (v - axis[i]) / (axis[i + 1] - axis[i])


def parse_latency(text: str | float | int) -> float:
    """'1.5ms' -> 1.5, '800us' -> 0.8, '0.2s' -> 200; a plain number is in milliseconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(ms|us|µs|s)?\s*", str(text).lower())
    if not m:
        raise RepasError(f"cannot read {text!r} as a latency: write e.g. 1.5ms, 800us or 0.2s")
    return float(m.group(1)) * {"ms": 1.0, None: 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}[m.group(2)]
