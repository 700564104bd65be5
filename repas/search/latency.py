"""The latency model: a measured table, interpolated, as a cost differentiable in the widths.

``latency(widths) = overhead + sum over parts of table(key, c_in, c_out) - sum over
boundaries of table(boundary key, c)``, where each part (a fused layer, the head or the SR
tail) is read off its table rows by bilinear interpolation in (c_in, c_out); at the grid's
points (multiples of the table's divisor) the prediction is the measured value itself. A
boundary is a tensor between two parts: what a part timed alone pays at its ends for it
(layout changes, int8's quantize / dequantize) and a whole net does not (tables measured
on ExecuTorch have these rows; without them the term is zero). Layers may mix float and
int8 rows (``precision``).

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
from repas.latency_table import (
    DEPTHWISE,
    Key,
    LatencyTable,
    boundary_grid,
    describe_key,
    layer_key,
    net_boundaries,
    net_parts,
    profile_grid,
)
from repas.spec import ArchSpec

Width = torch.Tensor | int | float


PRECISIONS = ("float", "int8")


class _Surface:
    """One table's rows for the parts a net needs (``needs``: the c_in and c_out ranges of
    each key): interpolated, with the gradient of a smooth fit; and its boundaries
    (``boundary_needs``), if it has them (else they cost nothing). A depthwise key's rows
    (c_in = c_out) are a line over the channels, read like a boundary's."""

    def __init__(self, table: LatencyTable, needs: dict[Key, tuple[list[int], list[int]]],
                 boundary_needs: dict[Key, list[int]], source: str, name: str,
                 hint: str = "measure one for this spec with 'repas profile' (same config), or bring one that covers it"
                 ) -> None:
        self.table = table
        self._grids: dict[Key, tuple[list[int], list[int], list[list[float]]]] = {}
        self._fits: dict[Key, tuple[float, float, float, float]] = {}
        self._lines: dict[Key, tuple[list[int], list[float], float]] = {}
        for key, (cins, couts) in needs.items():
            rows = table.entries.get(key)
            if not rows:
                raise RepasError(f"{source} has no rows for {describe_key(key)}: {hint}")
            if key[0] == "conv" and key[5] == DEPTHWISE:
                self._lines[key] = _line(f"{source} has", key, rows, couts, hint)
                continue
            xs, ys = sorted({ci for ci, _ in rows}), sorted({co for _, co in rows})
            if xs[0] > cins[0] or xs[-1] < cins[-1] or ys[0] > couts[0] or ys[-1] < couts[-1]:
                raise RepasError(f"{source}: {describe_key(key)} is measured for {xs[0]}..{xs[-1]} -> "
                                 f"{ys[0]}..{ys[-1]} channels, but {name} needs {cins[0]}..{cins[-1]} -> "
                                 f"{couts[0]}..{couts[-1]}: {hint}")
            missing = [(x, y) for x in xs for y in ys if (x, y) not in rows]
            if missing:
                raise RepasError(f"{source}: {describe_key(key)} lacks {len(missing)} grid points, e.g. "
                                 f"{missing[0][0]} -> {missing[0][1]} channels; every c_in of a key needs "
                                 "every c_out for interpolation")
            self._grids[key] = (xs, ys, [[rows[(x, y)] for y in ys] for x in xs])
            self._fits[key] = _bilinear_fit(xs, ys, self._grids[key][2])
        if table.has_boundaries:
            for key, needed in boundary_needs.items():
                self._lines[key] = _line(f"{source} has boundary rows, but", key, table.entries.get(key, {}),
                                         needed, hint)

    def part(self, key: Key, c_in: Width, c_out: Width) -> torch.Tensor | float:
        if key in self._lines:  # depthwise: c_in = c_out
            return self.boundary(key, c_out)
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

    def boundary(self, key: Key, channels: Width) -> torch.Tensor | float:
        """What rows over-count at a tensor of ``channels`` between two parts: linear
        interpolation of the boundary rows (0 without them), the slope of their line fit."""
        if key not in self._lines:
            return 0.0
        cs, values, slope = self._lines[key]
        i, t = _cell(cs, _value(channels))
        exact = (1 - t) * values[i] + t * values[min(i + 1, len(cs) - 1)]
        if not isinstance(channels, torch.Tensor):
            return exact
        return slope * (channels - _value(channels)) + exact


def _line(what: str, key: Key, rows: dict[tuple[int, int], float], needed: list[int], hint: str
          ) -> tuple[list[int], list[float], float]:
    """Rows measured at ``(c, c)`` as a line over ``c``: its points, values and fitted slope
    (``what`` begins the error where they fall short, e.g. "the table has")."""
    cs = sorted(c for c, c_out in rows if c == c_out)
    if not cs or cs[0] > needed[0] or cs[-1] < needed[-1]:
        raise RepasError(f"{what} no rows for {needed[0]}..{needed[-1]} channels at the {describe_key(key)}: {hint}")
    values = [rows[(c, c)] for c in cs]
    return cs, values, _bilinear_fit(cs, [0], [[v] for v in values])[1]


class LatencyModel:
    """Predicted whole-net latency (ms) of ``spec`` at any widths, from ``table``.

    ``latency = overhead + sum of the parts' rows - sum of the boundaries'``: a row is a part
    timed alone, which pays at its ends what a whole net pays once (tables with boundary
    rows say how much, for each tensor between two parts; see ``repas.latency_table``).

    Mixed precision: ``precision`` gives each layer's precision, "float" or "int8" (and,
    one longer, the head's or SR tail's; by default the last layer's). The int8 parts read
    ``int8_table`` (``repas profile --backend executorch-int8``), the float ones ``table``.
    A boundary between two int8 parts subtracts the int8 table's boundary row; any other one
    the float table's: where the precision changes, the net still quantizes or dequantizes
    the tensor (the int8 row's own conversion), and saves only the layout change and call
    a float boundary saves. The overhead is that of the first layer's table. A table of
    int8 rows passed as ``table`` alone predicts the all-int8 net."""

    metric = "latency"

    def __init__(self, table: LatencyTable, spec: ArchSpec, source: str = "the latency table", *,
                 precision: Sequence[str] | None = None, int8_table: LatencyTable | None = None,
                 int8_source: str = "the int8 latency table") -> None:
        self.table, self.spec = table, spec
        self.divisor = int(table.meta.get("divisor", "1") or 1)
        self._surfaces = {"float": _spec_surface(table, spec, source)}
        self.precision: list[str] | None = None
        if int8_table is not None:
            self._surfaces["int8"] = _spec_surface(int8_table, spec, int8_source)
        if precision is not None:
            self.precision = _precisions(precision, len(spec.layers))
            if "int8" in self.precision and int8_table is None:
                raise RepasError("a net with int8 layers needs the int8 latency table: measure one with "
                                 "'repas profile --backend executorch-int8'")
        first = self._precision(0)
        self.overhead = self._surfaces[first].table.overhead

    @classmethod
    def load(cls, path: str | Path, spec: ArchSpec, *, precision: Sequence[str] | None = None,
             int8_table: str | Path | None = None) -> LatencyModel:
        return cls(LatencyTable.load(path), spec, str(path), precision=precision,
                   int8_table=LatencyTable.load(int8_table) if int8_table is not None else None,
                   int8_source=str(int8_table))

    def _precision(self, index: int) -> str:
        """The surface part ``index`` reads: 'int8' or 'float' (the one table, by default)."""
        return self.precision[index] if self.precision else "float"

    def part(self, key: Key, c_in: Width, c_out: Width, precision: str = "float") -> torch.Tensor | float:
        """One part's latency by bilinear interpolation (exact at grid points), with the
        gradient of the smooth fit where the widths are tensors."""
        return self._surfaces[precision].part(key, c_in, c_out)

    def parts(self, widths: Sequence[Width]) -> list[float]:
        """Each part's predicted latency (layers, then the head or SR tail), in ms, as timed
        alone (the boundaries not subtracted)."""
        return [float(self.part(*p, self._precision(i))) for i, p in enumerate(net_parts(self.spec, widths))]

    def boundaries(self, widths: Sequence[Width]) -> list[float]:
        """What the rows over-count at each tensor between two parts (each layer's output), in ms."""
        out = []
        for i, (key, c) in enumerate(net_boundaries(self.spec, widths)):
            both = {self._precision(i), self._precision(i + 1)}
            out.append(float(self._surfaces["int8" if both == {"int8"} else "float"].boundary(key, c)))
        return out

    def layer_precisions(self) -> list[str]:
        """The precision each layer is priced in (float throughout, with one table)."""
        return [self._precision(i) for i in range(len(self.spec.layers))]

    @property
    def precisions(self) -> list[str]:
        """The precisions this model can price a layer in: float, and int8 with an int8 table."""
        return list(self._surfaces)

    def at(self, widths: Sequence[Width], precision: Sequence[str]) -> torch.Tensor | float:
        """The latency of ``widths`` with each layer in ``precision`` (one per layer, then
        optionally the head's), whatever precision the model was made with."""
        saved, self.precision = self.precision, _precisions(precision, len(self.spec.layers))
        missing = set(self.precision) - set(self._surfaces)
        try:
            if missing:
                raise RepasError(f"no {', '.join(sorted(missing))} latency table to price those layers: measure one "
                                 "with 'repas profile --backend executorch-int8'")
            return self(widths)
        finally:
            self.precision = saved

    def edge(self, i: int, w_prev: int, p_prev: str, w: int, p: str) -> float:
        """What layer ``i`` at ``w`` channels in precision ``p`` adds to the latency after
        layer ``i - 1`` at ``w_prev`` in ``p_prev``: its row, minus the boundary between the
        two (layer 0: plus the overhead of its precision's table). With ``tail``, the
        latency is a sum over consecutive layers (the floor at the slowest part aside)."""
        surface = self._surfaces[p]
        c_in = self.spec.in_channels if i == 0 else w_prev
        ms = float(surface.part(layer_key(self.spec, i), c_in, w))
        if i == 0:
            return ms + surface.table.overhead
        key, _ = net_boundaries(self.spec, [1] * len(self.spec.layers))[i - 1]
        return ms - float(self._surfaces["int8" if p_prev == p == "int8" else "float"].boundary(key, w_prev))

    def tail(self, w: int, p: str) -> float:
        """The head's (or SR tail's) row after the last layer at ``w`` channels in ``p`` (the
        head runs in the last layer's precision), minus the boundary between them."""
        widths = [1] * (len(self.spec.layers) - 1) + [w]
        key, c_in, c_out = net_parts(self.spec, widths)[-1]
        bkey, _ = net_boundaries(self.spec, widths)[-1]
        return float(self._surfaces[p].part(key, c_in, c_out)) - float(self._surfaces[p].boundary(bkey, w))

    def __call__(self, widths: Sequence[Width]) -> torch.Tensor | float:
        if len(widths) != len(self.spec.layers):
            raise ValueError(f"{len(widths)} widths for {len(self.spec.layers)} layers")
        total: torch.Tensor | float = self._surfaces[self._precision(0)].table.overhead
        slowest: torch.Tensor | float = 0.0
        for i, p in enumerate(net_parts(self.spec, widths)):
            part = self.part(*p, self._precision(i))
            total = total + part
            slowest = part if _value(part) > _value(slowest) else slowest
        for i, (key, c) in enumerate(net_boundaries(self.spec, widths)):
            both = {self._precision(i), self._precision(i + 1)}
            total = total - self._surfaces["int8" if both == {"int8"} else "float"].boundary(key, c)
        # a net takes at least as long as its slowest part: noisy boundary rows, subtracted at
        # every tensor, could otherwise predict a thin net at a negative time
        return total if _value(total) >= _value(slowest) else slowest


def _spec_surface(table: LatencyTable, spec: ArchSpec, source: str) -> _Surface:
    """The surface of the parts ``spec`` can have (the ranges its widths can span)."""
    return _Surface(table, profile_grid(spec, 10 ** 9), boundary_grid(spec, 10 ** 9), source, spec.name)


def _precisions(precision: Sequence[str], layers: int) -> list[str]:
    """Per-part precisions: one per layer, then the head's (the last layer's by default)."""
    out = [str(p) for p in precision]
    bad = [p for p in out if p not in PRECISIONS]
    if bad or len(out) not in (layers, layers + 1) or not out:
        raise RepasError(f"a precision per layer ({layers}, or {layers + 1} with the head's), each one of "
                         f"{', '.join(PRECISIONS)}; got {list(precision)}")
    return out if len(out) == layers + 1 else [*out, out[-1]]


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
