"""The exact allocation (``repas.search.exact_allocation``) against brute force: over every
combination of widths, and of widths and precisions under float and int8 latency tables,
it finds the best total value that meets the target."""

import itertools

import pytest
import torch
from conftest import tiny_spec
from test_latency_int8 import tables

from repas.search import LatencyModel, allocate_masks
from repas.search.cost import analytic_cost
from repas.search.exact_allocation import chain_cost, exact_allocation, score_values, width_options

RESOLUTION = 2000


def assert_optimal(options, value, cost, chosen, target, layers):
    """``chosen`` meets the target, is at least as good as every combination that meets it
    less the rounding slack (one unit a term), and no better than the true optimum."""
    assert float(cost(chosen)) <= target * (1 + 1e-12)
    feasible = [c for c in itertools.product(*options) if float(cost(c)) <= target]
    near = [c for c in feasible if float(cost(c)) <= target * (1 - (layers + 1) / RESOLUTION)]
    assert near and max(map(value, near)) <= value(chosen) + 1e-9 <= max(map(value, feasible)) + 1e-9


@pytest.mark.parametrize("fraction", [0.3, 0.55, 0.8])
def test_widths_are_optimal_under_macs(fraction):
    spec = tiny_spec()
    torch.manual_seed(0)
    scores = [torch.rand(lay.out_channels) * (i + 1) for i, lay in enumerate(spec.layers)]
    values = score_values(scores, threshold=0.0)
    macs = analytic_cost(spec, "macs")
    target = fraction * float(macs(spec.widths))
    widths, precisions = exact_allocation(spec, values, chain_cost(spec, macs), target, step=4,
                                          resolution=RESOLUTION)
    assert precisions == ["float"] * len(widths)
    options = [[(w, "float") for w in width_options(lay.out_channels, 4, lay.gated)] for lay in spec.layers]
    assert_optimal(options, lambda c: sum(values[i][w] for i, (w, _) in enumerate(c)),
                   lambda c: macs([w for w, _ in c]), list(zip(widths, precisions)), target, len(spec.layers))
    # allocate_masks takes the exact path for this cost: the same widths
    masks = allocate_masks(spec, scores, target, macs, step=4, threshold=0.0)
    assert [int(m.sum()) for m in masks] == widths


@pytest.mark.parametrize("fraction", [0.35, 0.6])
def test_widths_and_precisions_are_optimal_under_float_and_int8_tables(fraction):
    spec = tiny_spec()
    t = tables(spec)
    model = LatencyModel(t["float"][0], spec, int8_table=t["int8"][0])
    assert model.precisions == ["float", "int8"]
    torch.manual_seed(1)
    values = score_values([torch.rand(lay.out_channels) for lay in spec.layers], threshold=0.0)
    # int8 costs accuracy in the first layer (a penalty larger than some channels are worth)
    penalty = [{"int8": -1.5}] + [{}] * (len(spec.layers) - 1)
    dense_float = float(model.at(spec.widths, ["float"] * len(spec.layers)))
    target = fraction * dense_float
    widths, precisions = exact_allocation(spec, values, chain_cost(spec, model), target, step=4,
                                          precision_values=penalty, resolution=RESOLUTION)
    options = [[(w, p) for w in width_options(lay.out_channels, 4, lay.gated) for p in ("float", "int8")]
               for lay in spec.layers]
    scored = [[values[i][w] for w in range(lay.out_channels + 1)] for i, lay in enumerate(spec.layers)]

    def cost(combo):
        return model.at([w for w, _ in combo], [p for _, p in combo])

    def value(combo):
        return sum(scored[i][w] + penalty[i].get(p, 0.0) for i, (w, p) in enumerate(combo))

    assert_optimal(options, value, cost, list(zip(widths, precisions)), target, len(spec.layers))
    assert "int8" in precisions  # int8 pays under a budget well below the float net's latency


def test_a_latency_model_is_a_sum_over_consecutive_layers():
    """``edge`` and ``tail`` add up to the whole model's prediction, mixed precisions included."""
    spec = tiny_spec()
    t = tables(spec)
    model = LatencyModel(t["float"][0], spec, int8_table=t["int8"][0])
    for widths, precision in (([8, 8, 12, 4], ["float", "int8", "int8", "float"]),
                              ([4, 16, 8, 16], ["int8"] * 4), (spec.widths, ["float"] * 4)):
        total = model.edge(0, 0, "float", widths[0], precision[0])
        total += sum(model.edge(i, widths[i - 1], precision[i - 1], widths[i], precision[i])
                     for i in range(1, len(widths)))
        total += model.tail(widths[-1], precision[-1])
        assert total == pytest.approx(float(model.at(widths, precision)), rel=1e-9)


def test_negative_terms_are_counted_not_dropped():
    """A latency table's overhead may be negative (rows timed alone over-count a whole net),
    and so are boundaries: the allocation still finds the optimum (the README's example
    once found no net at all)."""
    from repas.search.exact_allocation import ChainCost

    spec = tiny_spec()
    macs = analytic_cost(spec, "macs")
    base = chain_cost(spec, macs)
    dense = float(macs(spec.widths))
    chain = ChainCost(lambda i, wp, pp, w, p: base.edge(i, wp, pp, w, p) - (0.3 * dense if i == 0 else 0.0)
                      - (0.02 * dense * w / 12 if i == 2 else 0.0),
                      base.tail, ["float"])
    torch.manual_seed(3)
    values = score_values([torch.rand(lay.out_channels) for lay in spec.layers], threshold=0.0)
    options = [[(w, "float") for w in width_options(lay.out_channels, 4, lay.gated)] for lay in spec.layers]

    def cost(c):
        widths = [w for w, _ in c]
        total = chain.edge(0, 0, "float", widths[0], "float") + chain.tail(widths[-1], "float")
        return total + sum(chain.edge(i, widths[i - 1], "float", widths[i], "float") for i in range(1, len(widths)))

    for fraction in (0.15, 0.35):
        target = fraction * dense
        widths, precisions = exact_allocation(spec, values, chain, target, step=4, resolution=RESOLUTION)
        assert_optimal(options, lambda c: sum(values[i][w] for i, (w, _) in enumerate(c)), cost,
                       list(zip(widths, precisions)), target, len(spec.layers))


def test_the_fastest_precision_cost_is_differentiable_in_gate_counts(recwarn):
    """PaS's budget under float and int8 tables: gradients reach every count, no warning."""
    from repas.search.exact_allocation import FastestPrecision

    spec = tiny_spec()
    t = tables(spec)
    model = LatencyModel(t["float"][0], spec, int8_table=t["int8"][0])
    cost = FastestPrecision(model)
    counts = [torch.tensor(float(w) - 0.4, requires_grad=True) for w in spec.widths]
    total = cost(counts)
    total.backward()
    assert all(c.grad is not None and float(c.grad) > 0 for c in counts)
    rounded = [round(float(c.detach())) for c in counts]
    assert float(cost(rounded)) == pytest.approx(float(model.at(rounded, cost.precision_of(rounded))))
    assert not [w for w in recwarn if "requires_grad" in str(w.message)]
