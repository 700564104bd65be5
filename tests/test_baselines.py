"""The baseline pruning methods: every one meets the budget within 3% on a small net, its
regulariser shrinks what it penalises, LASSO's reconstruction is exact where it writes and
helps where it fits, and Torch-Pruning's choice is what the masks keep."""

import copy

import pytest
import torch
from conftest import randomize_bn

from repas.errors import RepasError
from repas.reparam import RepBlock
from repas.search import (
    Budget,
    create_method,
    extract_subnet,
    gate_masks,
    gated_copy,
    list_methods,
    method_class,
    spec_cost,
)
from repas.search.importance import bn_scales, gated_layers, group_norms
from repas.search.methods.lasso import reconstruct, write_kernel
from repas.spec import QAREPVGG_BRANCHES, ArchSpec, LayerSpec
from repas.supernet import build

REP = ["conv", "conv1x1", "identity"]
# the baselines that ship with repas (a test may register more)
# (the unstructured ones keep every channel: tests/test_weight_sparsity.py)
BASELINES = [m for m in list_methods() if m != "pas" and method_class(m).__module__.startswith("repas.")
             and not method_class(m).weight_sparsity]


def small_spec() -> ArchSpec:
    """Wide enough that one channel moves the cost by well under 3%."""
    return ArchSpec(name="small", in_channels=3, input_size=(12, 12), num_classes=5,
                    layers=[LayerSpec(16, branches=["conv", "conv1x1"]),
                            LayerSpec(24, stride=2, branches=["conv", "conv1x1"]),
                            LayerSpec(24, branches=REP), LayerSpec(24, branches=REP)])


def supernet(seed: int = 0):
    torch.manual_seed(seed)
    model = build(small_spec())
    randomize_bn(model, seed)
    model.freeze_gates()
    return model


def inputs(n: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def train_with(model, method, steps: int = 8, lr: float = 0.01, task: bool = True):
    """A plain loop with the method's hooks (a PruningMethod, or None)."""
    x = inputs()
    opt = torch.optim.SGD([p for p in model.weight_parameters() if p.requires_grad], lr=lr)
    model.train(task)  # without the task loss, BN statistics stay as they are
    for update in range(1, steps + 1):
        loss = (model(x).square().mean() if task else 0) + (method.penalty() if method is not None else 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if method is not None:
            method.after_step(update)
    return model


def attach(name: str, model, budget, **options):
    return create_method(name, model, budget, step=1, tolerance=0.03, updates_per_epoch=4, epochs=2, **options)


def run_method(method: str, metric: str = "macs", fraction: float = 0.5):
    model = supernet()
    spec = model.spec
    budget = Budget(spec, fraction * spec_cost(spec, metric), metric)
    m = attach(method, model, budget)
    if m.trains:
        train_with(model, m)
    widths = m.prune(inputs())
    masks = gate_masks(model)
    assert widths == [int(k.sum()) for k in masks]
    return model, budget, masks


@pytest.mark.parametrize("metric", ["macs", "params"])
@pytest.mark.parametrize("method", BASELINES)
def test_every_method_meets_the_budget_within_3_percent(method, metric):
    model, budget, masks = run_method(method, metric)
    widths = [int(m.sum()) for m in gate_masks(model)]
    assert widths == [int(m.sum()) for m in masks]  # the gates carry the method's masks
    cost = float(budget.model(widths))
    assert budget.target * 0.97 <= cost <= budget.target * (1 + 1e-9), (method, widths, cost / budget.target)
    assert widths != model.spec.widths and all(w >= 1 for w in widths)
    sub = extract_subnet(model.eval())
    assert sub.spec.widths == widths and spec_cost(sub.spec, metric) == pytest.approx(cost)
    x = inputs(4)
    with torch.no_grad():
        assert torch.allclose(sub(x), gated_copy(model, gate_masks(model)).eval()(x), atol=1e-4, rtol=1e-4)


def test_methods_differ_and_uniform_is_uniform():
    chosen = {m: [int(k.sum()) for k in run_method(m)[2]] for m in ("uniform", "l1", "slimming", "lasso")}
    assert len({tuple(w) for w in chosen.values()}) > 1
    model, _, masks = run_method("uniform")
    ratios = [int(m.sum()) / m.numel() for m in masks]
    assert max(ratios) - min(ratios) < 0.15  # one multiplier, moved by the fit by a channel or two
    for i, m in enumerate(masks):  # every layer keeps its first channels (no criterion), nothing after them
        assert bool(m[: int(m.sum())].all()), (i, m.int().tolist())


def _scale_sum(model):
    with torch.no_grad():
        return float(sum(s.sum() for s in bn_scales(model)))


def _group_sum(model):
    with torch.no_grad():
        return float(sum(g.sum() for g in group_norms(model, normalized=False) if g is not None))


@pytest.mark.parametrize("method, measure", [("slimming", _scale_sum), ("oicsr", _group_sum)])
def test_penalties_shrink_what_they_penalize(method, measure):
    budget = Budget(small_spec(), 0.5 * spec_cost(small_spec()), "macs")
    plain = train_with(supernet(), None, steps=10, lr=0.05)
    model = supernet()
    regularized = train_with(model, attach(method, model, budget, strength=1.0), steps=10, lr=0.05)
    assert measure(regularized) < 0.9 * measure(plain)


def test_admm_pulls_pruned_filters_to_zero_and_projects_onto_the_budget():
    model = supernet()
    budget = Budget(model.spec, 0.5 * spec_cost(model.spec), "macs")
    method = create_method("admm", model, budget, strength=1.0, updates_per_epoch=4, epochs=4)
    reg = method.regularizer
    method.penalty()  # the first projection

    def pruned_norm():
        from repas.search.regularizers import _filter_rows
        with torch.no_grad():
            rows = _filter_rows(model)
            return float(sum(r[~reg.masks[i]].norm() for r, i in zip(rows, gated_layers(model))))

    before = pruned_norm()
    train_with(model, method, steps=16, lr=0.05, task=False)  # the penalty alone
    assert pruned_norm() < 0.7 * before
    assert any(float(u.abs().sum()) > 0 for u in reg.U)  # the multiplier moved
    assert float(budget.model([int(m.sum()) for m in reg.masks])) <= budget.target


def test_correlation_switches_channels_off_in_rounds():
    model = supernet()
    budget = Budget(model.spec, 0.5 * spec_cost(model.spec), "macs")
    method = attach("correlation", model, budget)
    train_with(model, method, steps=4)  # rounds end at updates 2 and 4 of 8
    off_mid = sum(int((~m).sum()) for m in gate_masks(model))
    assert off_mid > 0 and float(budget.model([int(m.sum()) for m in gate_masks(model)])) > budget.target
    state = method.state_dict()
    assert state["round"] == 2 and state["pairs"]


def test_lasso_writes_kernels_exactly_and_reconstruction_helps():
    model = supernet().eval()
    block = model.blocks[2]
    kernel, bias = block.equivalent_kernel_bias()
    new_k, new_b = torch.randn_like(kernel), torch.randn_like(bias)
    write_kernel(block, new_k, new_b, 2)
    k2, b2 = block.equivalent_kernel_bias()
    assert torch.allclose(k2, new_k, atol=1e-5) and torch.allclose(b2, new_b, atol=1e-5)
    qa = RepBlock(24, 24, 3, 1, QAREPVGG_BRANCHES)  # a BN after the sum scales what the branch adds
    randomize_bn(qa, 3)
    qa.eval()
    write_kernel(qa, new_k, new_b, 2)
    k3, b3 = qa.equivalent_kernel_bias()
    assert torch.allclose(k3, new_k, atol=1e-5) and torch.allclose(b3, new_b, atol=1e-5)

    model = supernet().eval()
    x = inputs(64)
    masks = [torch.ones(16, dtype=torch.bool)] + [torch.arange(24) % 2 == 0 for _ in range(3)]
    plain = gated_copy(model, masks).eval()
    rebuilt = copy.deepcopy(model)
    reconstruct(rebuilt, masks, x)
    with torch.no_grad():
        dense = model(x)
        err_plain = float((plain(x) - dense).pow(2).mean())
        err_rebuilt = float((gated_copy(rebuilt, masks).eval()(x) - dense).pow(2).mean())
    assert err_rebuilt < 0.5 * err_plain


def test_torch_pruning_masks_are_what_it_removed():
    pytest.importorskip("torch_pruning")
    import torch_pruning as tp

    from repas.search.methods.torch_pruning import plain_sequential, prune_once

    model = supernet().eval()
    masks = prune_once(model, 0.4, 1)
    net, names, ignored = plain_sequential(model)
    assert [net[int(n)].out_channels for n in names] == small_spec().widths
    # the same pruning done here, by hand: its widths and kept filters are the masks'
    original = [net[int(n)].weight.detach().clone() for n in names]
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    pruner = tp.pruner.MetaPruner(net, torch.zeros(1, 3, 12, 12), importance=importance, global_pruning=True,
                                  pruning_ratio=0.4, max_pruning_ratio=0.95, ignored_layers=ignored)
    pruner.step()
    assert [net[int(n)].out_channels for n in names] == [int(m.sum()) for m in masks] != small_spec().widths
    first = net[int(names[0])].weight
    assert torch.equal(first, original[0][masks[0]])  # the first conv's kept rows are the mask's


def test_unknown_methods_missing_inputs_and_ungated_models_are_clear_errors():
    model = supernet()
    budget = Budget(model.spec, 0.5 * spec_cost(model.spec), "macs")
    with pytest.raises(RepasError, match="unknown.*did you mean 'slimming'"):
        create_method("slimmin", model, budget)
    with pytest.raises(RepasError, match="lasso samples feature maps"):
        create_method("lasso", model, budget).prune()
    from repas.supernet import create_model

    with pytest.raises(RepasError, match="has no gated layer"):
        create_method("l1", create_model("repvgg-fmnist", gated=False), target=0.5)


def test_taylor_prunes_in_rounds_toward_the_target_and_never_brings_a_channel_back():
    model = supernet()
    budget = Budget(model.spec, 0.5 * spec_cost(model.spec), "macs")
    method = attach("taylor", model, budget)  # 8 updates: a round after each of the first 4
    dense = spec_cost(model.spec)
    x = inputs()
    opt = torch.optim.SGD([p for p in model.weight_parameters() if p.requires_grad], lr=0.01)
    costs, previous = [], [torch.ones(w, dtype=torch.bool) for w in model.spec.widths]
    for update in range(1, 5):
        loss = model.train()(x).square().mean()
        opt.zero_grad()
        loss.backward()
        assert all(g.weight.grad is not None for g in model.gate_modules() if g is not None)  # it hears the loss
        opt.step()
        method.after_step(update)
        masks = gate_masks(model)
        assert all(bool((m <= p).all()) for m, p in zip(masks, previous))  # pruned channels stay pruned
        previous = masks
        costs.append(float(budget.model([int(m.sum()) for m in masks])))
        goal = dense - (dense - budget.target) * update / 4
        assert costs[-1] <= goal
    assert costs == sorted(costs, reverse=True) and costs[0] < dense and costs[-1] <= budget.target
    widths = method.prune()
    assert 0.97 * budget.target <= float(budget.model(widths)) <= budget.target


def test_eagleeye_tries_uniform_first_and_keeps_the_candidate_closest_to_the_dense_outputs(monkeypatch):
    from repas.search.methods.adaptive_bn import AdaptiveBN

    monkeypatch.setattr(AdaptiveBN, "spread", 1.0)  # wide draws, so that the bound below has work to do
    model = supernet()
    budget = Budget(model.spec, 0.5 * spec_cost(model.spec), "macs")
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    method = attach("eagleeye", model, budget)
    widths = method.prune(inputs(64))
    # the uniform allocation is always a candidate: one multiplier, fitted by the L1 ranking
    assert method.tried[0]["widths"] == [int(m.sum()) for m in run_method("l1-layer")[2]]
    assert len({tuple(t["widths"]) for t in method.tried}) == len(method.tried) > 10  # each judged once
    best = min(method.tried, key=lambda t: t["divergence"])
    assert widths == best["widths"]
    assert all(0.97 * budget.target <= t["cost"] <= budget.target for t in method.tried)
    # no layer strays beyond `bound` of its uniform width (but for the fit's last step)
    uniform, step = method.tried[0]["widths"], max(method.step, 1)
    assert all(u / method.bound - step <= w <= u * method.bound + step
               for t in method.tried for u, w in zip(uniform, t["widths"]))
    # BatchNorm was recalibrated on the candidates' copies, never on the supernet itself
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
