"""The latency model: a measured table, interpolated, as a cost differentiable in the widths.

``latency(widths) = overhead + sum over parts of table(key, c_in, c_out)``, where each part
(a fused layer, the head or the SR tail) is read off its table rows by bilinear
interpolation in (c_in, c_out); at the grid's points (multiples of the table's divisor)
the prediction is the measured value itself.

The gradient comes from a smooth surrogate instead: per part, the least-squares fit
``a + b c_in + c c_out + d c_in c_out`` of its rows. Measured latency is a staircase in
the channel counts (SIMD blocks, cache sizes): locally flat, the interpolation's own slope
would tell the gates that a layer is free where a block's worth of channels is not, and
searches stall above their targets (seen on Fashion-MNIST: docs/results.md). Widths may
be the gates' straight-through counts, so the gradient reaches the gates of both the
layer and its producer.
"""

from __future__ import annotations

import bisect
import math
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
        self._fits: dict[Key, tuple[float, float, float, float]] = {}
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
            self._fits[key] = _bilinear_fit(xs, ys, self._grids[key][2])

    @classmethod
    def load(cls, path: str | Path, spec: ArchSpec) -> LatencyModel:
        return cls(LatencyTable.load(path), spec, str(path))

    def part(self, key: Key, c_in: Width, c_out: Width) -> torch.Tensor | float:
        """One part's latency by bilinear interpolation (exact at grid points), with the
        gradient of the smooth fit where the widths are tensors."""
        xs, ys, z = self._grids[key]
        x, y = _value(c_in), _value(c_out)
        i, tx = _cell(xs, x)
        j, ty = _cell(ys, y)
        i1, j1 = min(i + 1, len(xs) - 1), min(j + 1, len(ys) - 1)
        exact = ((1 - tx) * ((1 - ty) * z[i][j] + ty * z[i][j1])
                 + tx * ((1 - ty) * z[i1][j] + ty * z[i1][j1]))
        if not (isinstance(c_in, torch.Tensor) or isinstance(c_out, torch.Tensor)):
            return exact
        a, b, c, d = self._fits[key]
        smooth = b * c_in + c * c_out + d * c_in * c_out
        return smooth - _value(smooth) + exact  # the value of exact, the gradient of smooth

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


def _value(v: Width) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def _cell(axis: list[int], v: float) -> tuple[int, float]:
    """The grid cell holding ``v`` and the position in it (0..1)."""
    if len(axis) == 1:
        return 0, 0.0
    i = min(max(bisect.bisect_right(axis, v) - 1, 0), len(axis) - 2)
    return i, (v - axis[i]) / (axis[i + 1] - axis[i])


def _bilinear_fit(xs: list[int], ys: list[int], z: list[list[float]]) -> tuple[float, float, float, float]:
    """Least-squares ``(a, b, c, d)`` of ``z ~ a + b x + c y + d x y`` over the grid (the
    terms a one-value axis cannot determine are zero)."""
    points = [(x, y, z[i][j]) for i, x in enumerate(xs) for j, y in enumerate(ys)]
    cols = [lambda x, y: 1.0]
    names = ["a"]
    if len(xs) > 1:
        cols.append(lambda x, y: float(x))
        names.append("b")
    if len(ys) > 1:
        cols.append(lambda x, y: float(y))
        names.append("c")
    if len(xs) > 1 and len(ys) > 1:
        cols.append(lambda x, y: float(x * y))
        names.append("d")
    design = torch.tensor([[f(x, y) for f in cols] for x, y, _ in points], dtype=torch.float64)
    target = torch.tensor([[v] for _, _, v in points], dtype=torch.float64)
    solution = torch.linalg.lstsq(design, target).solution.flatten().tolist()
    coef = dict(zip(names, solution))
    return coef.get("a", 0.0), coef.get("b", 0.0), coef.get("c", 0.0), coef.get("d", 0.0)


def parse_latency(text: str | float | int) -> float:
    """'1.5ms' -> 1.5, '800us' -> 0.8, '0.2s' -> 200; a plain number is in milliseconds."""
    if isinstance(text, (int, float)):
        if not math.isfinite(text):
            raise RepasError(f"latency {text!r} is not a finite number: write e.g. 1.5ms, 800us or 0.2s")
        return float(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(ms|us|µs|s)?\s*", str(text).lower())
    if not m:
        raise RepasError(f"cannot read {text!r} as a latency: write e.g. 1.5ms, 800us or 0.2s")
    return float(m.group(1)) * {"ms": 1.0, None: 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}[m.group(2)]
