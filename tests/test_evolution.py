"""``evolution``, the evolutionary agent (issue 32, item 3): it meets the budget, keeps the
net its judge prefers, is reproducible from the run's seed, and under float and int8
tables puts every layer in its fastest precision (checked against brute force)."""

import itertools

import torch
from conftest import tiny_spec
from test_baselines import attach, inputs, supernet
from test_latency_int8 import tables

from repas.search import Budget, LatencyModel, spec_cost
from repas.search.exact_allocation import chain_cost, fastest_precisions
from repas.search.methods.evolution import Evolution


def test_the_agent_meets_the_budget_and_keeps_the_net_its_judge_prefers(monkeypatch):
    monkeypatch.setattr(Evolution, "population", 6)
    monkeypatch.setattr(Evolution, "generations", 3)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = supernet()
        budget = Budget(model.spec, 0.5 * spec_cost(model.spec), "macs")
        method = attach("evolution", model, budget)
        widths = method.prune(inputs(64))
        runs.append((widths, [t["widths"] for t in method.tried]))
        assert all(0.97 * budget.target <= t["cost"] <= budget.target for t in method.tried)
        assert widths == min(method.tried, key=lambda t: t["divergence"])["widths"]
        assert 6 < len(method.tried) <= 6 * 3  # each distinct net judged once
        assert method.precision is None  # a MACs budget prices no precision
    assert runs[0] == runs[1]  # the run's seed decides every draw


def test_fastest_precisions_are_the_fastest_combination():
    spec = tiny_spec()
    t = tables(spec)
    model = LatencyModel(t["float"][0], spec, int8_table=t["int8"][0])
    chain = chain_cost(spec, model)
    for widths in ([8, 12, 12, 12], [1, 4, 8, 4], [8, 1, 1, 12]):
        got = fastest_precisions(spec, chain, widths)
        best = min(itertools.product(("float", "int8"), repeat=len(widths)),
                   key=lambda p: float(model.at(widths, list(p))))
        assert float(model.at(widths, got)) == float(model.at(widths, list(best)))


def test_under_float_and_int8_tables_the_agent_prices_each_layer_at_its_fastest(monkeypatch):
    monkeypatch.setattr(Evolution, "population", 4)
    monkeypatch.setattr(Evolution, "generations", 2)
    torch.manual_seed(0)
    model = supernet()
    spec = model.spec
    t = tables(spec)
    latency = LatencyModel(t["float"][0], spec, int8_table=t["int8"][0])
    dense_float = float(latency.at(spec.widths, ["float"] * len(spec.layers)))
    budget = Budget(spec, 0.45 * dense_float, "latency", model=latency)
    method = attach("evolution", model, budget)
    widths = method.prune(inputs(64))
    assert method.precision == fastest_precisions(spec, chain_cost(spec, latency), widths)
    assert float(latency.at(widths, method.precision)) <= budget.target
    assert "int8" in method.precision and method.metrics()["int8_layers"] >= 1


def test_every_method_prices_a_candidate_at_its_fastest_precisions_under_mixed_tables():
    """A budget whose LatencyModel has float and int8 tables: any method's widths meet it
    with each layer in its fastest precision, which the method records."""
    for name in ("uniform", "l1", "eagleeye"):
        torch.manual_seed(0)
        model = supernet()
        spec = model.spec
        t = tables(spec)
        latency = LatencyModel(t["float"][0], spec, int8_table=t["int8"][0])
        target = 0.25 * float(latency.at(spec.widths, ["float"] * len(spec.layers)))  # under the int8 dense net
        method = attach(name, model, Budget(spec, target, "latency", model=latency))
        widths = method.prune(inputs(64))
        assert method.precision == fastest_precisions(spec, chain_cost(spec, latency), widths), name
        assert 0.97 * target <= float(latency.at(widths, method.precision)) <= target, name
        # float alone could not afford these widths: the precision is what buys them
        assert float(latency.at(widths, ["float"] * len(widths))) > target, name


def test_a_latency_model_with_its_precision_fixed_is_priced_as_given():
    """A LatencyModel made with a precision per layer (a mixed net the user chose) is the
    budget as it is: no method swaps in the fastest precisions."""
    torch.manual_seed(0)
    model = supernet()
    spec = model.spec
    t = tables(spec)
    fixed = ["float"] + ["int8"] * (len(spec.layers) - 1)
    latency = LatencyModel(t["float"][0], spec, precision=fixed, int8_table=t["int8"][0])
    budget = Budget(spec, 0.5 * float(latency(spec.widths)), "latency", model=latency)
    method = attach("uniform", model, budget)
    assert method.budget.model is latency
    widths = method.prune(inputs(64))
    assert method.precision is None and float(latency(widths)) <= budget.target
