"""``ffr``: the feature-flow penalty (issue 33)."""

import torch
from test_baselines import attach, inputs, supernet

from repas.search import Budget, spec_cost
from repas.search.methods.feature_flow import flow_penalty


def test_the_flow_penalty_is_zero_for_a_constant_flow_and_counts_gradient_and_curvature():
    x = torch.randn(2, 4, 5, 5)
    assert float(flow_penalty([x, x, x])) == 0.0
    linear = [x, 2 * x, 3 * x]  # a steady flow: gradient, no curvature
    assert float(flow_penalty(linear)) == float((x.pow(2).mean() * 2) / 2)
    bent = [x, 2 * x, 4 * x]
    assert float(flow_penalty(bent)) > float(flow_penalty(linear))
    assert float(flow_penalty([x, torch.randn(2, 8, 5, 5)])) == 0.0  # no difference between shapes


def test_the_method_penalises_the_batch_it_saw_and_its_gradient_reaches_the_weights():
    model = supernet()
    method = attach("ffr", model, Budget(model.spec, 0.5 * spec_cost(model.spec), "macs"))
    model.train()
    x = inputs(8)
    out = model(x)
    loss = method.batch_loss(x, out)
    assert float(loss.detach()) > 0 and method.metrics()["flow_penalty"] > 0
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.weight_parameters())
    assert float(method.batch_loss(x, out).detach()) == 0.0  # each batch's features counted once
    model.eval()
    model(x)
    assert method._features == []  # evaluation passes keep nothing
    widths = method.prune()
    assert 0.97 * method.budget.target <= float(method.budget.cost(widths)) <= method.budget.target
