"""The cost model: analytic MACs equal torch's FLOP counter on the fused net."""

import pytest
import torch
from conftest import tiny_spec
from torch.utils.flop_counter import FlopCounterMode

from repas.errors import RepasError
from repas.search import Budget, cost, extract_subnet, min_cost, parse_quantity, resolve_target, spec_cost
from repas.supernet import build, create_supernet_spec, fuse_repnet


def counted_macs(model, spec) -> int:
    x = torch.randn(1, spec.in_channels, *spec.input_size)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("space", ["repvgg-fmnist", "tiny"])
def test_macs_equal_flop_counter_on_fused_net(space):
    spec = tiny_spec() if space == "tiny" else create_supernet_spec(space)
    fused = fuse_repnet(build(spec).eval())
    assert spec_cost(spec, "macs") == counted_macs(fused, spec)
    deployed = sum(p.numel() for name, p in fused.named_parameters() if not name.startswith("gates."))
    assert spec_cost(spec, "params") == deployed


def test_macs_of_extracted_odd_widths_equal_flop_counter():
    torch.manual_seed(0)
    model = build(tiny_spec()).eval()
    masks = [torch.rand(lay.out_channels) > 0.4 for lay in model.spec.layers]
    for m in masks:
        m[0] = True
    sub = fuse_repnet(extract_subnet(model, masks))
    assert spec_cost(sub.spec) == counted_macs(sub, sub.spec)
    assert spec_cost(sub.spec) == cost(model.spec, [int(m.sum()) for m in masks])


def test_fmnist_space_is_sized_for_a_small_cpu():
    assert 5e6 <= spec_cost(create_supernet_spec("repvgg-fmnist")) <= 10e6


def test_budget_loss_gradient_reaches_every_gate():
    model = build(tiny_spec())
    budget = Budget(model.spec, 0.5 * spec_cost(model.spec))
    loss = budget.loss(budget.cost(model.channel_counts()))
    loss.backward()
    for g in model.gate_modules():
        assert g.weight.grad is not None and (g.weight.grad > 0).all()  # over budget: push every gate down


def test_target_resolution_and_limits():
    spec = tiny_spec()
    dense = spec_cost(spec)
    assert resolve_target(spec, "macs", fraction=0.5) == pytest.approx(0.5 * dense)
    assert resolve_target(spec, "macs", absolute="20K") == 20e3
    with pytest.raises(RepasError, match="above the dense cost"):
        resolve_target(spec, "macs", absolute=dense * 1.01)
    with pytest.raises(RepasError, match="below the smallest reachable cost"):
        resolve_target(spec, "macs", absolute=min_cost(spec) * 0.99)
    with pytest.raises(RepasError, match="exactly one budget"):
        resolve_target(spec, "macs")
    assert parse_quantity("2.5M") == 2.5e6 and parse_quantity("800k") == 8e5
    with pytest.raises(RepasError, match="cannot read"):
        parse_quantity("lots")


def test_the_wide_fmnist_space_is_the_default_at_one_and_a_half_times_the_widths():
    from repas.supernet import create_supernet_spec

    wide, default = create_supernet_spec("repvgg-fmnist-wide"), create_supernet_spec("repvgg-fmnist")
    assert wide.widths == [w * 3 // 2 for w in default.widths]
    # MACs grow with c_in * c_out: the default net is 1/1.5^2 of the wide one, but for the stem and head
    assert 0.44 < spec_cost(default) / spec_cost(wide) < 0.5
    assert resolve_target(wide, "macs", absolute=spec_cost(default)) == spec_cost(default)  # reachable
