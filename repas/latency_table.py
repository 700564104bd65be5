"""LatencyTable: measured latencies of single layers on one device, as a versioned CSV file.

``repas profile`` writes one; a user may also measure one on a phone (see
``scripts/export_micro_models.py``) and bring it. The search's latency model
(``repas.search.latency``) interpolates it. The format, one row per measured micro-model::

    # repas-latency-table: 1
    # backend: onnxruntime 1.31.1
    # device: Intel(R) Xeon(R) Processor, 2 cores
    # threads: 1
    # divisor: 4
    op,kernel,stride,height,width,groups,dilation,act,c_in,c_out,ms
    conv,3,1,28,28,1,1,relu,1,16,0.0123
    head,0,0,7,7,1,1,none,64,10,0.0031
    sr_tail,0,0,360,640,1,1,none,1,4,0.91
    overhead,0,0,0,0,1,1,none,0,0,0.0105
    boundary,0,0,14,14,1,1,relu,32,32,0.0021

``conv``: one fused block (conv with bias, then ``act``: relu, prelu or identity) with an
input of ``c_in`` x ``height`` x ``width``; ``groups`` 0 is a depthwise conv (as many groups
as channels, ``c_in`` = ``c_out``: its rows are a line, not a grid). ``head``: global average pool + linear from
``c_in`` x ``height`` x ``width`` features to ``c_out`` classes. ``sr_tail``: the SR global
residual (fixed 1x1 conv of the ``c_in``-channel LR input), the add and PixelShuffle to
``c_out / c_in`` = scale^2. ``overhead``: the constant term, counted once per inference: what
whole nets measure beyond the sum of their rows (it may be negative: every row was timed
with an empty model's time subtracted, which a whole net pays once). ``boundary`` (optional;
``repas profile`` measures them on ExecuTorch): what a row pays at its ends for a ``c_in`` x
``height`` x ``width`` tensor (``c_out`` = ``c_in``) that a whole net keeps inside, between
two of its parts: XNNPACK's layout changes, int8's quantize and dequantize, one delegate
call. It is measured as two chained cheap parts (a 1x1 depthwise conv on that tensor, then
``act``, the activation of the layer that makes the tensor: in int8 a PReLU stays float, and
the tensor with it) against twice one of them; the latency model subtracts it at every
tensor between two parts. ``ms`` is in
milliseconds: a median over calls, the lowest over a few sessions. Lines
starting with ``#`` carry metadata (``key: value``); unknown metadata keys are kept.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repas.atomic import atomic_write_text
from repas.errors import RepasError
from repas.spec import ArchSpec

TABLE_FORMAT = "repas-latency-table"
TABLE_VERSION = 1
COLUMNS = ("op", "kernel", "stride", "height", "width", "groups", "dilation", "act", "c_in", "c_out", "ms")
OPS = ("conv", "head", "sr_tail", "overhead", "boundary")
ACTS = ("relu", "prelu", "identity", "none")

# (op, kernel, stride, height, width, groups, dilation, act): rows with one key differ only in channels
Key = tuple[str, int, int, int, int, int, int, str]
DEPTHWISE = 0  # the groups of a depthwise conv's key: as many as its channels, whatever they are


def conv_groups(groups: int, channels: int) -> int:
    """A conv key's groups as the layer has them (``DEPTHWISE``: one per channel)."""
    return channels if groups == DEPTHWISE else groups


def conv_key(kernel: int, stride: int, height: int, width: int, groups: int, dilation: int, act: str) -> Key:
    return ("conv", kernel, stride, height, width, groups, dilation, act)


def head_key(height: int, width: int) -> Key:
    return ("head", 0, 0, height, width, 1, 1, "none")


def sr_tail_key(height: int, width: int) -> Key:
    return ("sr_tail", 0, 0, height, width, 1, 1, "none")


OVERHEAD_KEY: Key = ("overhead", 0, 0, 0, 0, 1, 1, "none")


def boundary_key(height: int, width: int, act: str = "none") -> Key:
    """The boundary at a tensor of ``height`` x ``width`` that a part ending in ``act`` makes."""
    return ("boundary", 0, 0, height, width, 1, 1, act)


def describe_key(key: Key) -> str:
    op, k, s, h, w, g, d, act = key
    if op == "conv":
        extra = (", depthwise" if g == DEPTHWISE else f", groups {g}" if g != 1 else "") + (
            f", dilation {d}" if d != 1 else "")
        return f"{k}x{k} conv stride {s} + {act} at {h}x{w}{extra}"
    return {"head": f"pool + linear head at {h}x{w}", "sr_tail": f"SR residual + PixelShuffle at {h}x{w}",
            "overhead": "per-call overhead", "boundary": f"boundary between two parts at {h}x{w}"}[op]


@dataclass
class LatencyTable:
    """Rows of ``(key, c_in, c_out) -> ms`` and the device's metadata."""

    entries: dict[Key, dict[tuple[int, int], float]] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)

    def add(self, key: Key, c_in: int, c_out: int, ms: float) -> None:
        self.entries.setdefault(key, {})[(int(c_in), int(c_out))] = float(ms)

    @property
    def has_boundaries(self) -> bool:
        return any(key[0] == "boundary" for key in self.entries)

    @property
    def overhead(self) -> float:
        row = self.entries.get(OVERHEAD_KEY)
        return next(iter(row.values())) if row else 0.0

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())

    # ---- files ---------------------------------------------------------------------
    def to_csv(self) -> str:
        meta = {TABLE_FORMAT: str(TABLE_VERSION), **{k: v for k, v in self.meta.items() if k != TABLE_FORMAT}}
        buf = io.StringIO()
        for k, v in meta.items():
            buf.write(f"# {k}: {v}\n")
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for key in sorted(self.entries):
            for (c_in, c_out), ms in sorted(self.entries[key].items()):
                writer.writerow([*key[:7], key[7], c_in, c_out, f"{ms:.6g}"])
        return buf.getvalue()

    def save(self, path: str | Path) -> Path:
        atomic_write_text(path, self.to_csv())
        return Path(path)

    @classmethod
    def from_csv(cls, text: str, where: str = "latency table") -> LatencyTable:
        table = cls()
        lines = text.splitlines()
        body_start = 0
        for n, line in enumerate(lines):
            if not line.startswith("#"):
                body_start = n
                break
            if ":" in line:
                k, v = line[1:].split(":", 1)
                table.meta[k.strip()] = v.strip()
        else:
            body_start = len(lines)
        version = table.meta.get(TABLE_FORMAT)
        if version is None:
            raise RepasError(f"{where}: not a repas latency table (first line must be "
                             f"'# {TABLE_FORMAT}: {TABLE_VERSION}')")
        if not version.isdigit() or int(version) > TABLE_VERSION:
            raise RepasError(f"{where}: table version {version} is newer than this repas understands "
                             f"({TABLE_VERSION}); upgrade repas")
        rows = list(csv.reader(lines[body_start:]))
        if not rows or tuple(c.strip() for c in rows[0]) != COLUMNS:
            raise RepasError(f"{where}: the header row must be {','.join(COLUMNS)}")
        for n, row in enumerate(rows[1:], start=body_start + 2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(COLUMNS):
                raise RepasError(f"{where}, line {n}: {len(row)} fields, expected {len(COLUMNS)} ({','.join(COLUMNS)})")
            op, act = row[0].strip(), row[7].strip()
            if op not in OPS:
                raise RepasError(f"{where}, line {n}: unknown op {op!r}; expected one of {OPS}")
            if act not in ACTS:
                raise RepasError(f"{where}, line {n}: unknown act {act!r}; expected one of {ACTS}")
            try:
                ints = [int(c) for c in row[1:7]] + [int(row[8]), int(row[9])]
                ms = float(row[10])
            except ValueError:
                raise RepasError(f"{where}, line {n}: kernel..dilation, c_in and c_out must be integers and "
                                 f"ms a number, got {row}") from None
            if ms != ms or abs(ms) == float("inf") or (ms < 0 and op != "overhead"):
                raise RepasError(f"{where}, line {n}: ms must be a finite number >= 0 (the overhead may be "
                                 f"negative), got {row[10]}")
            key = (op, *ints[:6], act)
            table.add(key, ints[6], ints[7], ms)
        return table

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise RepasError(f"no latency table at {path}: measure one with 'repas profile', or bring one "
                             "measured on your device (format: repas/latency_table.py)")
        return cls.from_csv(path.read_text(), str(path))


# ---- which rows a spec needs ------------------------------------------------------------
def layer_key(spec: ArchSpec, index: int) -> Key:
    """The table key of layer ``index`` of ``spec`` after fusion (its input size, not its output)."""
    lay = spec.layers[index]
    h, w = spec.input_size if index == 0 else spec.feature_sizes()[index - 1]
    return conv_key(lay.kernel, lay.stride, h, w, lay.groups, lay.dilation, lay.act or spec.act)


def net_parts(spec: ArchSpec, widths: Sequence[Any]) -> list[tuple[Key, Any, Any]]:
    """``(key, c_in, c_out)`` of every timed part of ``spec`` at ``widths`` (ints or tensors)."""
    parts, c_in = [], spec.in_channels
    for i, c_out in enumerate(widths):
        parts.append((layer_key(spec, i), c_in, c_out))
        c_in = c_out
    h, w = spec.feature_sizes()[-1]
    if spec.task == "super-resolution":
        parts.append((sr_tail_key(h, w), spec.in_channels, spec.in_channels * spec.scale ** 2))
    else:
        parts.append((head_key(h, w), c_in, spec.num_classes))
    return parts


def channel_grid(full: int, divisor: int) -> list[int]:
    """Widths a table measures for a layer of at most ``full`` channels: 1, the multiples of
    ``divisor``, and ``full``."""
    return sorted({1, full, *range(divisor, full + 1, divisor)})


def channel_values(low: int, high: int, divisor: int, points: int = 0) -> list[int]:
    """The channel counts a table measures between ``low`` and ``high``: both ends and the
    multiples of ``divisor`` between them; with ``points``, multiples of a coarser step (a
    multiple of ``divisor``) that leaves about ``points`` of them (wide user layers)."""
    step = divisor
    if points:
        step = divisor * max(1, -(-(high - low) // (points * divisor)))
    return sorted({low, high, *range(-(-low // step) * step, high + 1, step)} - {0})


def profile_grid(spec: ArchSpec, divisor: int) -> dict[Key, tuple[list[int], list[int]]]:
    """For every key the spec uses: the c_in and c_out values to measure (a full grid, so
    that the latency model can interpolate bilinearly). Ungated layers keep their width."""
    def values(i: int) -> set[int]:
        if i < 0:
            return {spec.in_channels}
        lay = spec.layers[i]
        return set(channel_grid(lay.out_channels, divisor)) if lay.gated else {lay.out_channels}

    grid: dict[Key, tuple[set[int], set[int]]] = {}
    for i in range(len(spec.layers)):
        cins, couts = grid.setdefault(layer_key(spec, i), (set(), set()))
        cins |= values(i - 1)
        couts |= values(i)
    h, w = spec.feature_sizes()[-1]
    if spec.task == "super-resolution":
        grid[sr_tail_key(h, w)] = ({spec.in_channels}, {spec.in_channels * spec.scale ** 2})
    else:
        grid[head_key(h, w)] = (values(len(spec.layers) - 1), {spec.num_classes})
    return {k: (sorted(a), sorted(b)) for k, (a, b) in grid.items()}


def net_boundaries(spec: ArchSpec, widths: Sequence[Any]) -> list[tuple[Key, Any]]:
    """``(key, channels)`` of every tensor a whole net passes between two of its parts: each
    layer's output (the last one's feeds the head or the SR tail)."""
    return [(boundary_key(*hw, lay.act or spec.act), c)
            for lay, hw, c in zip(spec.layers, spec.feature_sizes(), widths)]


def boundary_grid(spec: ArchSpec, divisor: int) -> dict[Key, list[int]]:
    """For every boundary key of the spec: the channel counts to measure (those of
    ``profile_grid`` for the layers whose outputs have that size)."""
    grid: dict[Key, set[int]] = {}
    for lay, hw in zip(spec.layers, spec.feature_sizes()):
        values = set(channel_grid(lay.out_channels, divisor)) if lay.gated else {lay.out_channels}
        grid.setdefault(boundary_key(*hw, lay.act or spec.act), set()).update(values)
    return {k: sorted(v) for k, v in grid.items()}
