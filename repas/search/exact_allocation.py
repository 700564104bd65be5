"""Exact allocation of widths (and precisions) on a chain net, by dynamic programming.

A repas net is a chain: its cost, MACs, params or a latency table's, is a constant plus a
term per pair of consecutive layers (``edge``: layer i's row after layer i - 1, minus the
boundary between them) plus the head's (``tail``). A method's channel scores give each
layer a value for keeping its ``w`` best channels (the sum of their scores less a
threshold) and each precision a value (a penalty, by default none). The allocation that
maximizes the total value under the budget is found over every combination of widths (in
steps of ``step``) and precisions, not greedily: a knapsack over the layers whose state is
the last layer's width and precision and the cost spent so far. The cost is counted in
``resolution`` units of the target, each term rounded up, so the chosen net always meets
the target and is optimal among the nets whose cost, so rounded, fits (the rounding costs
at most (layers + 1) units: 0.3% of the target at the defaults on a 7-layer net).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from repas.errors import RepasError
from repas.search.cost import AnalyticCost, CostFn, layer_costs
from repas.search.latency import LatencyModel
from repas.spec import ArchSpec


@dataclass
class ChainCost:
    """A cost as ``sum over i of edge(i, w_prev, p_prev, w, p) + tail(w_last, p_last)``
    (layer 0's edge carries any constant; its w_prev and p_prev are unused)."""

    edge: Callable[[int, int, str, int, str], float]
    tail: Callable[[int, str], float]
    precisions: list[str]


class FastestPrecision:
    """A latency budget's cost with every layer in its fastest precision at the widths asked
    (``fastest_precisions``): what a net of those widths costs when each layer ships in the
    precision that runs it fastest. Differentiable in tensor widths (the precisions are
    chosen at the rounded widths). Methods price candidates with it wherever the budget's
    ``LatencyModel`` has float and int8 tables (``PruningMethod``)."""

    metric = "latency"

    def __init__(self, model: LatencyModel) -> None:
        self.model = model
        self.chain = ChainCost(model.edge, model.tail, model.precisions)

    def precision_of(self, widths: Sequence[Any]) -> list[str]:
        rounded = [max(1, int(round(float(w.detach() if isinstance(w, torch.Tensor) else w)))) for w in widths]
        return fastest_precisions(self.model.spec, self.chain, rounded)

    def __call__(self, widths: Sequence[Any]) -> torch.Tensor | float:
        return self.model.at(widths, self.precision_of(widths))


def fixed_precisions(model: CostFn, layers: int) -> list[str] | None:
    """The precision ``model`` prices each layer in (a LatencyModel's own; else float);
    None where the allocation chooses it (``FastestPrecision``)."""
    if isinstance(model, FastestPrecision):
        return None
    if isinstance(model, LatencyModel):
        return model.layer_precisions()
    return ["float"] * layers


def chain_cost(spec: ArchSpec, model: CostFn) -> ChainCost | None:
    """The chain terms of ``model`` (analytic MACs or params, or a ``LatencyModel``) on
    ``spec``; None for a cost the allocation cannot split (a user model's, a custom one)."""
    if isinstance(model, FastestPrecision):
        return model.chain
    if isinstance(model, LatencyModel):
        return ChainCost(model.edge, model.tail, model.precisions)
    if isinstance(model, AnalyticCost) and isinstance(spec, ArchSpec):
        n = len(spec.layers)

        def edge(i: int, w_prev: int, p_prev: str, w: int, p: str) -> float:
            widths = [1] * n
            widths[i] = w
            if i > 0:
                widths[i - 1] = w_prev
            return float(layer_costs(spec, widths, model.metric)[i])

        def tail(w: int, p: str) -> float:
            return float(layer_costs(spec, [1] * (n - 1) + [w], model.metric)[-1])
        return ChainCost(edge, tail, ["float"])
    return None


def width_options(full: int, step: int, gated: bool, most: int = 48) -> list[int]:
    """The widths a layer may take: multiples of ``step`` (coarser for wide layers, at most
    about ``most`` of them) and the full width; an ungated layer keeps its width."""
    if not gated:
        return [full]
    step = max(1, step)
    if full // step > most:
        step = step * -(-full // (step * most))
    return sorted({*range(step, full + 1, step), full})


def exact_allocation(spec: ArchSpec, values: Sequence[Sequence[float]], chain: ChainCost, target: float, *,
                     step: int = 1, precisions: Sequence[Sequence[str]] | None = None,
                     precision_values: Sequence[dict[str, float]] | None = None, resolution: int = 2000
                     ) -> tuple[list[int], list[str]]:
    """The widths and precisions of the highest total value whose cost meets ``target``.

    ``values[i][w]``: the value of layer i at w channels (``w`` from 0 to its width).
    ``precisions[i]``: the precisions layer i may take (default: every one the cost prices).
    ``precision_values[i][p]``: a value added for layer i in precision p (default 0)."""
    n = len(spec.layers)
    options = [[(w, p) for w in width_options(lay.out_channels, step, lay.gated)
                for p in (precisions[i] if precisions else chain.precisions)] for i, lay in enumerate(spec.layers)]
    unit = target / resolution

    def units(c: float) -> int:
        return int(np.ceil(c / unit - 1e-9))

    def value(i: int, w: int, p: str) -> float:
        return float(values[i][w]) + (precision_values[i].get(p, 0.0) if precision_values else 0.0)

    # every term in units, once; a term may be negative (a latency table's overhead, a boundary)
    first = [units(chain.edge(0, 0, "float", w, p)) for w, p in options[0]]
    edges = [np.array([[units(chain.edge(i, wp, pp, w, p)) for w, p in options[i]] for wp, pp in options[i - 1]])
             for i in range(1, n)]
    tails = [units(chain.tail(w, p)) for w, p in options[-1]]
    # the budget axis holds "at most b units spent" for b from -off: the sum of every possible
    # saving, so that a prefix may run over the target before later negative terms bring it back
    off = max(0, -min(first)) + sum(max(0, -int(e.min())) for e in edges) + max(0, -min(tails))
    size = resolution + 2 * off + 1
    neg = -np.inf
    best = np.full((len(options[0]), size), neg)
    for s, (w, p) in enumerate(options[0]):
        if first[s] + off < size:
            best[s, first[s] + off:] = value(0, w, p)  # at most c units spent: any budget from c up
    back: list[np.ndarray] = []
    for i in range(1, n):
        new = np.full((len(options[i]), size), neg)
        arg = np.zeros((len(options[i]), size), dtype=np.int64)
        for s, (w, p) in enumerate(options[i]):
            v = value(i, w, p)
            for r in range(len(options[i - 1])):
                shifted = _shift(best[r], int(edges[i - 1][r, s]))
                better = shifted + v > new[s]
                new[s][better] = shifted[better] + v
                arg[s][better] = r
        back.append(arg)
        best = new
    final = np.full(len(options[-1]), neg)
    spent = np.zeros(len(options[-1]), dtype=np.int64)
    for s in range(len(options[-1])):
        left = resolution - tails[s] + off  # the index of what the layers may spend
        if 0 <= left < size:
            final[s], spent[s] = best[s, left], left
    if not np.isfinite(final).any():
        raise RepasError(f"no widths in steps of {step} meet the target {target:.6g}: raise the target or lower "
                         "--round-to")
    s = int(np.argmax(final))
    b = int(spent[s])
    chosen = [options[-1][s]]
    for i in range(n - 1, 0, -1):
        r = int(back[i - 1][s, b])
        b = min(size - 1, b - int(edges[i - 1][r, s]))
        s = r
        chosen.append(options[i - 1][s])
    chosen.reverse()
    return [w for w, _ in chosen], [p for _, p in chosen]


def fastest_precisions(spec: ArchSpec, chain: ChainCost, widths: Sequence[int]) -> list[str]:
    """Each layer's precision that makes the net at ``widths`` fastest under ``chain``
    (exact: a shortest path over the layers, the precision of each a state)."""
    ps = chain.precisions
    best = {p: chain.edge(0, 0, "float", widths[0], p) for p in ps}
    back: list[dict[str, str]] = []
    for i in range(1, len(widths)):
        step = {p: min(ps, key=lambda q: best[q] + chain.edge(i, widths[i - 1], q, widths[i], p)) for p in ps}
        best = {p: best[step[p]] + chain.edge(i, widths[i - 1], step[p], widths[i], p) for p in ps}
        back.append(step)
    last = min(ps, key=lambda p: best[p] + chain.tail(widths[-1], p))
    out = [last]
    for step in reversed(back):
        out.append(step[out[-1]])
    return out[::-1]


def _shift(row: np.ndarray, c: int) -> np.ndarray:
    """``row`` moved ``c`` units up the budget axis (entry b holds row[b - c]): the best value
    with at most b units spent, after a term of c units. A negative term moves it down."""
    out = np.full_like(row, -np.inf)
    if c >= 0:
        if c < row.size:
            out[c:] = row[:row.size - c]
    else:
        out[:c] = row[-c:]
        out[c:] = row[-1]  # a saving past the end: as good as the largest budget
    return out


def score_values(scores: Sequence[torch.Tensor], threshold: float = 0.5) -> list[list[float]]:
    """Each layer's value at every width: the sum of its ``w`` best (``score - threshold``)."""
    out = []
    for s in scores:
        ordered = torch.sort(s.detach().float() - threshold, descending=True).values
        out.append([0.0, *torch.cumsum(ordered, 0).tolist()])
    return out
