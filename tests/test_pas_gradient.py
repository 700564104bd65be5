"""PaS prices every channel alike: the budget's gradient on a layer's count is divided by
that layer's marginal cost per channel (issue 32); ``pas-raw`` keeps the published gradient,
proportional to it. Values never change, only gradients."""

import pytest
import torch
from conftest import tiny_spec

from repas.search import Budget, create_method, list_methods
from repas.search.cost import cost as spec_cost_of
from repas.search.methods.pas import per_channel_normalized
from repas.supernet import build


def macs_like(counts):
    # layer costs per channel that differ 30x: 1 -> c0 (x30), c0 -> c1 (x2), c1 -> c2 (x1)
    c0, c1, c2 = counts
    return 30 * 3 * c0 + 2 * c0 * c1 + c1 * c2


def test_normalized_gradients_are_equal_per_channel_and_values_unchanged():
    raw = [torch.tensor(8.0, requires_grad=True), torch.tensor(16.0, requires_grad=True), 10]
    norm = [torch.tensor(8.0, requires_grad=True), torch.tensor(16.0, requires_grad=True), 10]
    loss_raw = (macs_like(raw) / 500 - 1) ** 2
    shown = per_channel_normalized(norm, macs_like)
    assert [float(c.detach()) if isinstance(c, torch.Tensor) else c for c in shown] == [8.0, 16.0, 10]
    loss_norm = (macs_like(shown) / 500 - 1) ** 2
    assert float(loss_norm.detach()) == pytest.approx(float(loss_raw.detach()))
    loss_raw.backward()
    loss_norm.backward()
    g_raw = [float(c.grad) for c in raw[:2]]
    g_norm = [float(c.grad) for c in norm[:2]]
    marginal = [30 * 3 + 2 * 16, 2 * 8 + 10]  # d cost / d c0, d cost / d c1
    assert g_raw[0] / g_raw[1] == pytest.approx(marginal[0] / marginal[1])
    assert g_norm[0] == pytest.approx(g_norm[1])  # every channel pulled alike
    assert (g_norm[0] + g_norm[1]) / 2 == pytest.approx(sum(g_raw) / 2, rel=0.2)  # alpha keeps its scale


def test_a_flat_or_falling_marginal_cost_is_not_divided_by_zero():
    counts = [torch.tensor(4.0, requires_grad=True), torch.tensor(4.0, requires_grad=True)]
    out = per_channel_normalized(counts, lambda c: 5 * c[0] - 0 * c[1])
    (out[0] + out[1]).backward()
    assert torch.isfinite(counts[0].grad) and torch.isfinite(counts[1].grad)
    assert float(counts[1].grad) == pytest.approx(1000.0)  # priced at 1/1000 of the mean, not infinite


def test_pas_and_pas_raw_differ_only_in_the_gates_budget_gradient():
    assert {"pas", "pas-raw"} <= set(list_methods())
    got = {}
    for name in ("pas", "pas-raw"):
        torch.manual_seed(0)
        model = build(tiny_spec())
        budget = Budget(model.spec, 0.3 * float(spec_cost_of(model.spec, model.spec.widths, "macs")), "macs", 5.0)
        method = create_method(name, model, budget)
        method.update = method.total  # past pas's ramp: both aim at the budget itself
        penalty = method.penalty()
        penalty.backward()
        got[name] = (float(penalty.detach()), [g.weight.grad.abs().mean().item() for g in model.gate_modules()
                                      if g is not None])
    assert got["pas"][0] == pytest.approx(got["pas-raw"][0])
    raw, norm = got["pas-raw"][1], got["pas"][1]
    assert max(norm) / min(norm) < 1.01 < 1.5 < max(raw) / min(raw)  # alike per channel, or by cost


def _wider(spec, factor: int):
    import dataclasses

    return dataclasses.replace(spec, layers=[dataclasses.replace(lay, out_channels=lay.out_channels * factor)
                                             for lay in spec.layers])


def _search_cost_trace(name: str, updates: int = 60, wider: int = 1, gate_lr: float | None = 0.05
                       ) -> tuple[list[float], list[int], list[int]]:
    """The budget loss alone (no task loss) driving the gates of a tiny net (each layer
    ``wider`` x as wide) down to 0.4x its MACs with the trainer's gate optimizer at
    ``gate_lr`` (None: the method's default): cost over target after each update, final widths."""
    from repas.supernet.gating import gate_widths
    from repas.train.optim import gate_optimizer

    torch.manual_seed(0)
    model = build(_wider(tiny_spec(), wider))
    dense = float(spec_cost_of(model.spec, model.spec.widths, "macs"))
    budget = Budget(model.spec, 0.4 * dense, "macs", 5.0)
    method = create_method(name, model, budget, updates_per_epoch=updates, epochs=1)
    opt = gate_optimizer(model, method.default_gate_lr() if gate_lr is None else gate_lr)
    trace = []
    for update in range(1, updates + 1):
        opt.zero_grad()
        method.penalty().backward()
        opt.step()
        method.after_step(update)
        trace.append(float(budget.cost(gate_widths(model))) / budget.target)
    return trace, gate_widths(model), model.spec.widths


def test_pas_tracks_the_budget_down_without_collapsing_where_published_pas_does():
    trace, widths, dense = _search_cost_trace("pas")
    assert min(trace) > 0.8, trace  # never far under the budget on the way
    assert 0.85 < trace[-1] < 1.15, trace
    assert all(w >= d / 8 for w, d in zip(widths, dense)), widths  # no layer thinned to a sliver
    raw, raw_widths, _ = _search_cost_trace("pas-raw")
    assert min(raw) < 0.5, raw  # gates all at 1.0 cross together and overshoot the budget


def test_the_default_gate_lr_makes_the_search_the_same_at_any_width():
    # the budget's pull on each gate falls as 1/channels: at a fixed lr a net 8x as wide
    # lags its budget; at the default lr (scaled to the gated channels) it follows the same path
    lrs = []
    for wider in (1, 8):
        model = build(_wider(tiny_spec(), wider))
        budget = Budget(model.spec, 0.4 * float(spec_cost_of(model.spec, model.spec.widths, "macs")), "macs", 5.0)
        lrs.append(create_method("pas", model, budget).default_gate_lr())
    assert lrs[0] == pytest.approx(0.05 * 44 / 272) and lrs[1] == pytest.approx(8 * lrs[0])  # 44 gated channels
    narrow, _, _ = _search_cost_trace("pas", updates=120, gate_lr=None)
    wide, _, _ = _search_cost_trace("pas", updates=120, wider=8, gate_lr=None)
    fixed, _, _ = _search_cost_trace("pas", updates=120, wider=8, gate_lr=0.05 * 44 / 272)
    assert 0.85 < narrow[-1] < 1.15 and 0.85 < wide[-1] < 1.15, (narrow[-1], wide[-1])
    assert max(abs(a - b) for a, b in zip(narrow, wide)) < 0.2  # the narrow net's steps are 1/8 of a layer
    assert wide[59] < 1.1 < 1.4 < fixed[59], (wide[59], fixed[59])  # the ramp's end: the narrow lr lags
    assert max(abs(a - b) for a, b in zip(narrow, fixed)) > 0.4


def test_pas_starts_with_every_channel_on_ranked_by_filter_norm_and_ramps_the_target():
    from repas.search.prunable import filter_norms

    torch.manual_seed(0)
    model = build(tiny_spec())
    budget = Budget(model.spec, 0.5 * float(spec_cost_of(model.spec, model.spec.widths, "macs")), "macs", 5.0)
    method = create_method("pas", model, budget, updates_per_epoch=10, epochs=2)
    for gate, norms in zip(model.gate_modules(), filter_norms(model)):
        if gate is not None:
            w = gate.weight.detach()
            assert bool((w > gate.threshold).all()) and bool((w <= 1.0).all())
            assert torch.equal(torch.argsort(w), torch.argsort(norms, stable=True))
    assert float(method.penalty().detach()) == 0.0  # update 0 aims at the dense cost
    assert method.current_target() == pytest.approx(method.dense_cost)
    method.after_step(5)  # a quarter of the way: half-way down the ramp (ramp_fraction 0.5)
    assert method.current_target() == pytest.approx((method.dense_cost + budget.target) / 2)
    method.load_state_dict(method.state_dict() | {"update": 20})
    assert method.current_target() == pytest.approx(budget.target)


def test_pas_warns_when_its_gates_end_the_search_above_the_budget():
    from repas.search.allocation import uniform_masks
    from repas.supernet.gating import apply_masks

    torch.manual_seed(0)
    model = build(tiny_spec())
    budget = Budget(model.spec, 0.5 * float(spec_cost_of(model.spec, model.spec.widths, "macs")), "macs", 5.0)
    method = create_method("pas", model, budget)
    (lagged,) = method.warnings()  # every gate still on: the dense cost, 2x the budget
    assert "the search ended at 2.00 x its target" in lagged and "search.gate_lr" in lagged
    scores = [-torch.arange(lay.out_channels, dtype=torch.float32) for lay in model.spec.layers]
    apply_masks(model, uniform_masks(model.spec, scores, budget), scores)
    assert method.warnings() == []  # at the budget: nothing to say
