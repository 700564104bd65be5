"""``cap``: compensation after cutting, without labels, in a time budget (issue 33)."""

import copy

import torch
from test_baselines import attach, inputs, supernet

from repas.search import Budget, spec_cost
from repas.search.methods.compensation import Compensation
from repas.supernet.gating import apply_masks


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_compensation_brings_the_cut_net_back_towards_the_dense_outputs(monkeypatch):
    model = supernet()
    dense = copy.deepcopy(model)
    budget = Budget(model.spec, 0.5 * spec_cost(model.spec), "macs")
    method = attach("cap", model, budget)
    widths = method.prune(inputs(64))
    assert 0.97 * budget.target <= float(budget.cost(widths)) <= budget.target
    m = method.metrics()
    assert m["layers_compensated"] == sum(g is not None for g in model.gate_modules())  # every gated layer
    assert 0 < m["compensation_seconds"] < Compensation.seconds
    # the same cut without compensation: the same masks on the untouched net
    cut = copy.deepcopy(dense)
    apply_masks(cut, [g.mask() for g in model.gate_modules()], [torch.ones(w) for w in model.spec.widths])
    held_out = torch.randn(32, 3, 12, 12, generator=torch.Generator().manual_seed(7))
    reference = outputs(dense, held_out)
    err_cut = (outputs(cut, held_out) - reference).pow(2).mean()
    err_cap = (outputs(model, held_out) - reference).pow(2).mean()
    assert err_cap < 0.5 * err_cut  # on images it never saw


def test_a_spent_time_budget_compensates_nothing(monkeypatch):
    monkeypatch.setattr(Compensation, "seconds", 0.0)
    model = supernet()
    before = {k: v.clone() for k, v in model.state_dict().items() if "gate" not in k}
    method = attach("cap", model, Budget(model.spec, 0.5 * spec_cost(model.spec), "macs"))
    method.prune(inputs(64))
    assert method.metrics()["layers_compensated"] == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
