"""Latency tables and the latency model: micro-models equal to what the exporter writes,
the CSV format, interpolation exact where it should be, gradients, and allocation."""

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_spec

from repas.deploy import export_onnx
from repas.deploy.micro_models import MicroModule, onnx_bytes, random_inputs
from repas.deploy.onnx_export import onnx_session
from repas.deploy.profile import assemble_table, plan_profile, profile
from repas.errors import RepasError
from repas.latency_table import LatencyTable, net_parts
from repas.search import (
    Budget,
    LatencyModel,
    allocate_masks,
    parse_latency,
    resolve_target,
    subnet_spec,
    threshold_masks,
)
from repas.spec import ArchSpec, LayerSpec
from repas.supernet import build, create_supernet_spec, fuse_repnet


def wide_spec(layers: int = 2):
    """32-channel 3x3 convs at 32x32: dense rows cost tenths of a millisecond, far above
    timing noise, unlike the tiny spec's microseconds (an order asserted on those flakes)."""
    return ArchSpec(name="wide", in_channels=3, input_size=(32, 32), num_classes=5,
                    layers=[LayerSpec(32, branches=["conv", "conv1x1"]),
                            LayerSpec(32, branches=["conv", "conv1x1", "identity"])][:layers])


def small_sr_spec():
    return create_supernet_spec("ecbsr-m4c16", input_size=(10, 12), scale=2)


def test_micro_models_in_onnx_equal_torch():
    spec = tiny_spec()
    spec.layers[1] = LayerSpec(12, stride=2, branches=["conv"], act="prelu")
    sr = small_sr_spec()
    cases = [[p] for p in net_parts(spec, [8, 12, 12, 12])] + [[p] for p in net_parts(sr, sr.widths)]
    cases += [net_parts(spec, [4, 8, 12, 12]), net_parts(sr, [4, 8, 16, 8, 12, 4])]
    for parts in cases:
        inputs = random_inputs(parts, seed=1)
        session = onnx_session(onnx_bytes(parts))
        got = session.run(None, {i.name: x for i, x in zip(session.get_inputs(), inputs)})[0]
        with torch.no_grad():
            want = MicroModule(parts)(*[torch.from_numpy(x) for x in inputs]).numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), parts


@pytest.mark.parametrize("name,widths", [("repvgg-fmnist", [8, 16, 12, 64, 20, 40]),
                                         ("ecbsr-m4c16", [16, 8, 12, 16, 4, 4])])
def test_a_whole_net_chain_has_the_ops_the_exporter_writes(name, widths, tmp_path):
    spec = create_supernet_spec(name, **({"input_size": (10, 12)} if name.startswith("ecbsr") else
                                         {"in_channels": 1, "input_size": (28, 28), "num_classes": 10}))
    masks = [torch.arange(lay.out_channels) < w for lay, w in zip(spec.layers, widths)]
    net = fuse_repnet(build(subnet_spec(spec, masks)).eval())
    shape = (1, spec.in_channels, *spec.input_size)
    exported = onnx.load(export_onnx(net, shape, tmp_path / "net.onnx"))
    chain = onnx.load_from_string(onnx_bytes(net_parts(spec, widths)))
    assert [n.op_type for n in chain.graph.node] == [n.op_type for n in exported.graph.node]


def synthetic_times(plan, overhead=0.02, empty=0.005):
    """Row time bilinear in (c_in, c_out): interpolating it on the grid is exact."""
    def row(key, ci, co):
        return 1e-3 * ci * co * key[1] + 2e-3 * ci + 0.01
    times = {"empty": empty}
    for name, parts in plan.models().items():
        if name.startswith("row"):
            times[name] = row(*parts[0]) + empty
        elif name.startswith("net"):
            times[name] = sum(row(*p) for p in parts) + overhead
    return times, row


def test_latency_model_is_exact_on_a_bilinear_truth_and_rounds_trips_through_csv(tmp_path):
    spec = tiny_spec()
    plan = plan_profile(spec, divisor=4)
    times, row = synthetic_times(plan)
    table = assemble_table(plan, times, {"backend": "synthetic"})
    assert table.overhead == pytest.approx(0.02)
    table = LatencyTable.load(table.save(tmp_path / "t.csv"))
    model = LatencyModel(table, spec)
    for widths in ([8, 12, 12, 12], [1, 1, 1, 1], [3, 7, 5, 11], [8, 4, 9, 12]):  # grid points and between
        truth = sum(row(*p) for p in net_parts(spec, widths)) + 0.02
        assert float(model(widths)) == pytest.approx(truth, rel=1e-5), widths


def test_latency_gradient_reaches_the_gates_of_a_layer_and_its_producer():
    spec = tiny_spec()
    plan = plan_profile(spec, divisor=4)
    model = LatencyModel(assemble_table(plan, synthetic_times(plan)[0], {}), spec)
    net = build(spec)
    with torch.no_grad():
        for g in net.gate_modules():
            g.weight.uniform_(0.0, 1.0)
    model(net.channel_counts()).backward()
    grads = [g.weight.grad for g in net.gate_modules()]
    assert all(gr is not None and gr.abs().sum() > 0 for gr in grads)
    # layer 1's count enters its own row and layer 2's: d/dw1 = d row1/d c_out + d row2/d c_in
    assert torch.all(grads[1] > 0)


def test_a_table_that_does_not_cover_the_spec_names_what_is_missing():
    spec = tiny_spec()
    plan = plan_profile(spec, divisor=4)
    table = assemble_table(plan, synthetic_times(plan)[0], {})
    wider = tiny_spec()
    wider.layers[2] = LayerSpec(24, branches=["conv", "conv1x1"])
    with pytest.raises(RepasError, match="needs"):
        LatencyModel(table, wider)
    with pytest.raises(RepasError, match="no rows for 3x3 conv stride 1 \\+ relu at 20x20"):
        LatencyModel(table, tiny_spec(size=20))


@pytest.mark.parametrize("text,message", [
    ("op,kernel\n", "not a repas latency table"),
    ("# repas-latency-table: 9\nop\n", "newer than this repas"),
    ("# repas-latency-table: 1\nop,kernel,stride,height,width,groups,dilation,act,c_in,c_out,ms\n"
     "conv,3,1,8,8,1,1,relu,4,4,fast\n", "line 3"),
    ("# repas-latency-table: 1\nop,kernel,stride,height,width,groups,dilation,act,c_in,c_out,ms\n"
     "pool,3,1,8,8,1,1,relu,4,4,0.1\n", "unknown op 'pool'"),
])
def test_bad_tables_give_clear_errors(text, message):
    with pytest.raises(RepasError, match=message):
        LatencyTable.from_csv(text)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_profile_measures_every_row_on_a_real_backend(backend):
    spec = tiny_spec()
    table = profile(spec, backend, divisor=4, threads=1, warmup=3, runs=9, passes=3, progress=False)
    plan = plan_profile(spec, 4)
    assert len(table) == len(plan.rows) + 1
    assert backend in table.meta["backend"] and table.meta["threads"] == "1" and table.meta["device"]
    # the tiny spec's rows differ by microseconds, below timing noise: order is checked on
    # a net whose dense convs cost ~20x its 1-channel ones (measured ~0.25 vs ~0.013 ms)
    wide = wide_spec()
    wide_table = profile(wide, backend, divisor=16, threads=1, warmup=3, runs=9, passes=3, progress=False)
    key = net_parts(wide, wide.widths)[1][0]  # the second conv, 32 -> 32 channels at full width
    rows = wide_table.entries[key]
    assert rows[(32, 32)] > 3 * rows[(1, 1)]  # in the table itself: each row times its own shape
    model = LatencyModel(wide_table, wide)
    assert float(model([32, 32])) > float(model([1, 1]))


def test_latency_targets_and_budgets():
    assert parse_latency("1.5ms") == 1.5 and parse_latency("800us") == pytest.approx(0.8)
    assert parse_latency("0.2s") == pytest.approx(200) and parse_latency(3) == 3.0
    with pytest.raises(RepasError, match="as a latency"):
        parse_latency("fast")
    spec = tiny_spec()
    plan = plan_profile(spec, 4)
    model = LatencyModel(assemble_table(plan, synthetic_times(plan)[0], {}), spec)
    dense = float(model(spec.widths))
    assert resolve_target(spec, "latency", absolute=f"{dense / 2}ms", model=model) == pytest.approx(dense / 2)
    with pytest.raises(RepasError, match="above the dense cost"):
        resolve_target(spec, "latency", absolute=f"{dense * 2}ms", model=model)
    with pytest.raises(RepasError, match="needs a latency model"):
        Budget(spec, 1.0, "latency")


def test_ranked_allocation_spends_the_budget_where_channels_are_cheap():
    spec = tiny_spec()
    gen = torch.Generator().manual_seed(0)
    scores = [torch.rand(lay.out_channels, generator=gen) + 0.5 for lay in spec.layers]
    price = [10.0, 1.0, 1.0, 1.0]  # layer 0's channels cost ten times the others'

    def cost(widths):
        return sum(p * w for p, w in zip(price, widths))

    target = 0.5 * cost(spec.widths)
    ranked = allocate_masks(spec, scores, target, cost, step=2)
    flat = threshold_masks(spec, scores, target, cost, step=2)
    for masks in (ranked, flat):
        widths = [int(m.sum()) for m in masks]
        assert cost(widths) <= target
        assert all(w % 2 == 0 for w in widths)

    def kept(masks):
        return sum(float((s[m] - 0.5).sum()) for s, m in zip(scores, masks))

    assert kept(ranked) > kept(flat)
    assert int(ranked[0].sum()) < int(flat[0].sum())  # the expensive layer gives up more
    # the kept channels are the highest-scored of each layer
    for s, m in zip(scores, ranked):
        if 0 < m.sum() < m.numel():
            assert s[m].min() >= s[~m].max()


def test_profile_on_executorch_xnnpack():
    pytest.importorskip("executorch")  # CI installs it with the deploy extra
    spec = wide_spec(layers=1)
    table = profile(spec, "executorch", divisor=32, threads=1, warmup=1, runs=3, passes=1, progress=False)
    plan = plan_profile(spec, 32, boundaries=True)  # ExecuTorch tables measure boundaries by default
    assert "XNNPACK" in table.meta["backend"] and len(table) == len(plan.rows) + len(plan.boundaries) + 1
    assert table.has_boundaries
    model = LatencyModel(table, spec)  # (3 noisy runs: the rows' order; a whole net subtracts noisy boundaries)
    assert sum(model.parts([32])) > sum(model.parts([1]))


def test_profile_int8_rows_on_executorch_xnnpack():
    pytest.importorskip("executorch")
    from repas.deploy.profile import TIMERS

    spec = wide_spec(layers=1)
    # boundary rows are measured as in the float test above (and modelled in test_latency_int8.py): not twice
    table = profile(spec, "executorch-int8", divisor=32, threads=1, warmup=1, runs=3, passes=1, progress=False,
                    boundaries=False)
    plan = plan_profile(spec, 32)
    assert table.meta["backend"].endswith("XNNPACK int8") and len(table) == len(plan.rows) + 1
    model = LatencyModel(table, spec)  # (a few noisy runs: the rows' order, not the boundaries')
    assert sum(model.parts([32])) > sum(model.parts([1]))
    # the rows really are int8: the widest conv runs faster than in float (2.3x measured at 32 channels)
    timers = {b: TIMERS[b](1, 5, 40)[0] for b in ("executorch", "executorch-int8")}
    widest = max((p for p in plan_profile(wide_spec(), 16).rows if p[0][0] == "conv"), key=lambda p: p[1] * p[2])
    times = {b: min(t([widest]) for _ in range(2)) for b, t in timers.items()}
    assert times["executorch-int8"] < 0.8 * times["executorch"], times


def test_a_table_timed_on_another_device_comes_back_through_files(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from repas.deploy.profile import table_from_device, write_plan

    spec = wide_spec()
    plan = plan_profile(spec, 16)
    write_plan(plan, tmp_path)
    with pytest.raises(RepasError, match="has no times.json"):
        table_from_device(tmp_path)
    timer = Path(__file__).parents[1] / "scripts" / "time_micro_models.py"
    assert "repas" not in "".join(line for line in timer.read_text().splitlines() if "import" in line)
    subprocess.run([sys.executable, str(timer), str(tmp_path), "--warmup", "1", "--runs", "2", "--passes", "1"],
                   check=True, capture_output=True, env={"OMP_WAIT_POLICY": "PASSIVE", "PATH": "/usr/bin:/bin"})
    table = table_from_device(tmp_path)
    assert len(table) == len(plan.rows) + 1 and "onnxruntime" in table.meta["backend"]
    model = LatencyModel(table, spec)
    assert float(model([32, 32])) > float(model([1, 1]))


def test_on_a_staircase_the_gradient_still_says_channels_cost():
    """Measured latency is flat within SIMD blocks; the value keeps the steps, the gradient
    comes from the smooth fit, so a gate on a flat step still feels the budget."""
    spec = tiny_spec()
    plan = plan_profile(spec, divisor=4)
    times = {"empty": 0.0}
    for name, parts in plan.models().items():
        steps = [sum(-(-c // 8) for c in (ci, co)) * 0.01 for _, ci, co in parts]  # flat within blocks of 8
        times[name] = sum(steps)
    model = LatencyModel(assemble_table(plan, times, {}), spec)
    widths = [torch.tensor(float(w), requires_grad=True) for w in (8, 12, 12, 12)]
    total = model(widths)
    assert float(total.detach()) == pytest.approx(float(model([8, 12, 12, 12])))  # the value is the table's
    total.backward()
    assert all(float(w.grad) > 0 for w in widths)
