"""The latency model on ExecuTorch tables: boundary rows (what a part timed alone pays at
its ends for a tensor that a whole net keeps inside), int8 tables, and mixed-precision nets
whose layers read float and int8 rows. Synthetic times: no timing, no ExecuTorch."""

import pytest
import torch
from conftest import tiny_spec

from repas.config import PipelineConfig, SearchConfig
from repas.deploy.profile import assemble_table, boundary_probe, plan_profile
from repas.errors import RepasError
from repas.latency_table import LatencyTable, boundary_key, net_boundaries, net_parts
from repas.search import LatencyModel, subnet_spec
from repas.stages.common import cost_model
from repas.supernet import create_supernet_spec


def truth(spec, scale=1.0, per_call=0.004, conversion=2e-5):
    """Times of a synthetic backend: each part costs ``core`` and each chain pays, at every
    tensor between two of its parts, ``per_call`` + ``conversion`` per element less than its
    parts alone (a whole net converts layouts / precisions once, at its ends)."""
    def core(key, ci, co):
        return scale * (1e-3 * ci * co * max(key[1], 1) + 2e-3 * ci + 1e-3 * co + 0.01)

    def saved(key, c):
        return per_call + conversion * c * key[3] * key[4]

    def chain(parts, empty, overhead):
        if parts[0][0][0] == "overhead":
            return empty
        if len(parts) == 2 and parts[0] == parts[1]:  # a boundary probe, twice
            key, c, _ = parts[0]
            return empty + 2 * core(*parts[0]) - saved(boundary_key(key[3], key[4]), c)
        if len(parts) == 1:
            return empty + core(*parts[0])
        widths = [co for _, _, co in parts[:-1]]
        return (overhead + sum(core(*p) for p in parts)  # (the overhead includes the empty model's time)
                - sum(saved(k, c) for k, c in net_boundaries(spec, widths)))

    return core, saved, chain


def measured(plan, chain, empty=0.005, overhead=0.03):
    return {name: chain(parts, empty, overhead) for name, parts in plan.models().items()}


def predicted_by_hand(spec, widths, core, saved, overhead):
    return (overhead + sum(core(*p) for p in net_parts(spec, widths))
            - sum(saved(k, c) for k, c in net_boundaries(spec, widths)))


def test_boundary_rows_make_the_model_exact_where_a_constant_overhead_cannot(tmp_path):
    spec = tiny_spec()
    core, saved, chain = truth(spec)
    plan = plan_profile(spec, 4, boundaries=True)
    assert plan.boundaries and plan_profile(spec, 4).boundaries == []
    # every tensor between two parts of any subnet is on the boundary grid
    keys = {k for k, _ in plan.boundaries}
    assert keys == {k for k, _ in net_boundaries(spec, spec.widths)}
    table = assemble_table(plan, measured(plan, chain), {"backend": "synthetic"})
    assert table.has_boundaries and table.overhead == pytest.approx(0.03)
    for key, c in plan.boundaries:
        assert table.entries[key][(c, c)] == pytest.approx(saved(key, c))
    table = LatencyTable.load(table.save(tmp_path / "t.csv"))  # boundary rows survive the file
    assert table.has_boundaries
    model = LatencyModel(table, spec)
    for widths in ([8, 12, 12, 12], [4, 4, 8, 4], [1, 12, 4, 8]):
        assert float(model(widths)) == pytest.approx(predicted_by_hand(spec, widths, core, saved, 0.03), rel=1e-6)
    assert sum(model.boundaries([8, 12, 12, 12])) > 0
    # the same times without the boundary rows: the constant overhead cannot follow the widths
    plain = LatencyModel(assemble_table(plan_profile(spec, 4), measured(plan, chain), {}), spec)
    errors = [abs(float(plain(w)) / predicted_by_hand(spec, w, core, saved, 0.03) - 1)
              for w in ([8, 12, 12, 12], [4, 4, 4, 4])]
    assert max(errors) > 0.01


def test_the_boundary_probe_is_a_cheap_part_that_keeps_the_tensor():
    key = boundary_key(6, 6)
    (op, kernel, stride, h, w, groups, _, act), c_in, c_out = boundary_probe(key, 12)
    assert (op, kernel, stride, h, w, groups, act, c_in, c_out) == ("conv", 1, 1, 6, 6, 12, "identity", 12, 12)
    # the probe ends as the layer that makes the tensor: a PReLU stays float in int8, its output too
    assert boundary_probe(boundary_key(6, 6, "prelu"), 4)[0][7] == "prelu"
    spec = create_supernet_spec("ecbsr-m4c16", input_size=(10, 12), scale=2)
    acts = [k[7] for k, _ in net_boundaries(spec, spec.widths)]
    assert acts == [lay.act or spec.act for lay in spec.layers] and "prelu" in acts


def test_a_table_without_boundary_rows_predicts_as_before():
    spec = tiny_spec()
    core, _, chain = truth(spec, per_call=0.0, conversion=0.0)
    plan = plan_profile(spec, 4)
    model = LatencyModel(assemble_table(plan, measured(plan, chain), {}), spec)
    assert not model.table.has_boundaries and model.boundaries(spec.widths) == [0.0] * len(spec.layers)
    widths = [4, 8, 12, 4]
    assert float(model(widths)) == pytest.approx(0.03 + sum(core(*p) for p in net_parts(spec, widths)))


def test_boundary_rows_must_cover_the_spec():
    spec = tiny_spec()
    _, _, chain = truth(spec)
    plan = plan_profile(spec, 4, boundaries=True)
    table = assemble_table(plan, measured(plan, chain), {})
    key = net_boundaries(spec, spec.widths)[-1][0]
    table.entries[key] = {cc: v for cc, v in table.entries[key].items() if cc[0] < 12}
    with pytest.raises(RepasError, match="boundary rows"):
        LatencyModel(table, spec)


def tables(spec):
    """A float and an int8 table of the same spec (int8 parts 2.5x cheaper, int8 boundaries dearer)."""
    out = {}
    for precision, scale, conversion in (("float", 1.0, 1e-5), ("int8", 0.4, 4e-5)):
        core, saved, chain = truth(spec, scale=scale, conversion=conversion)
        plan = plan_profile(spec, 4, boundaries=True)
        overhead = 0.03 if precision == "float" else 0.02
        out[precision] = (assemble_table(plan, measured(plan, chain, overhead=overhead), {}), core, saved, overhead)
    return out


def test_mixed_precision_reads_each_layer_from_its_table():
    spec = tiny_spec()
    t = tables(spec)
    float_table, int8_table = t["float"][0], t["int8"][0]
    widths = [8, 8, 12, 4]
    # all one precision: the same as that table alone
    assert float(LatencyModel(float_table, spec, precision=["float"] * 4, int8_table=int8_table)(widths)) == \
        pytest.approx(float(LatencyModel(float_table, spec)(widths)))
    assert float(LatencyModel(float_table, spec, precision=["int8"] * 4, int8_table=int8_table)(widths)) == \
        pytest.approx(float(LatencyModel(int8_table, spec)(widths)))
    # mixed: int8 rows for int8 parts; an int8 -> int8 boundary subtracts the int8 row, any
    # other boundary the float one; the overhead of the first layer's table
    precision = ["float", "int8", "int8", "float", "int8"]  # the last one: the head
    model = LatencyModel(float_table, spec, precision=precision, int8_table=int8_table)
    parts = net_parts(spec, widths)
    expected = t["float"][3] + sum(t[p][1](*part) for p, part in zip(precision, parts))
    for i, (key, c) in enumerate(net_boundaries(spec, widths)):
        both = {precision[i], precision[i + 1]}
        expected -= t["int8" if both == {"int8"} else "float"][2](key, c)
    assert float(model(widths)) == pytest.approx(expected, rel=1e-6)
    assert model.parts(widths) == pytest.approx([t[p][1](*part) for p, part in zip(precision, parts)])
    # one precision per layer: the head follows the last layer
    short = LatencyModel(float_table, spec, precision=precision[:4], int8_table=int8_table)
    assert short.precision == precision[:4] + ["float"]
    # int8 layers are cheaper here: more int8 layers, lower latency
    assert float(LatencyModel(float_table, spec, precision=["int8"] * 4, int8_table=int8_table)(widths)) < \
        float(model(widths)) < float(LatencyModel(float_table, spec)(widths))


def test_mixed_precision_errors_are_one_line():
    spec = tiny_spec()
    t = tables(spec)
    with pytest.raises(RepasError, match="int8 latency table"):
        LatencyModel(t["float"][0], spec, precision=["float", "int8", "float", "float"])
    with pytest.raises(RepasError, match="a precision per layer"):
        LatencyModel(t["float"][0], spec, precision=["float", "int4", "float", "float"], int8_table=t["int8"][0])
    with pytest.raises(RepasError, match="a precision per layer"):
        LatencyModel(t["float"][0], spec, precision=["float"] * 2)


def test_gradients_reach_the_widths_through_rows_and_boundaries():
    spec = tiny_spec()
    t = tables(spec)
    model = LatencyModel(t["float"][0], spec, precision=["int8", "int8", "float", "float"], int8_table=t["int8"][0])
    widths = [torch.tensor(v, requires_grad=True) for v in (8.0, 8.0, 12.0, 4.0)]
    total = model(widths)
    assert float(total.detach()) == pytest.approx(float(model([8, 8, 12, 4])))
    total.backward()
    assert all(w.grad is not None and torch.isfinite(w.grad) for w in widths)
    # a boundary alone, as a tensor: its value is the interpolation, its slope the fit's
    surface = model._surfaces["int8"]
    key = net_boundaries(spec, spec.widths)[0][0]
    c = torch.tensor(6.0, requires_grad=True)
    value = surface.boundary(key, c)
    value.backward()
    assert float(value.detach()) == pytest.approx(surface.boundary(key, 6)) and float(c.grad) > 0


def test_a_latency_budget_uses_the_int8_rows_when_the_config_points_at_an_int8_table(tmp_path):
    """``search.latency_table`` naming an int8 table (``repas profile --backend
    executorch-int8 --out ...``) is all a latency budget for an int8 export needs."""
    spec = tiny_spec()
    t = tables(spec)
    path = t["int8"][0].save(tmp_path / "latency-int8.csv")
    cfg = PipelineConfig(run_dir=str(tmp_path / "run"), search=SearchConfig(metric="latency", latency_table=str(path)))
    cost = cost_model(cfg, spec, "latency")
    widths = [8, 4, 12, 8]
    assert float(cost(widths)) == pytest.approx(float(LatencyModel(t["int8"][0], spec)(widths)))
    assert float(cost(widths)) < float(LatencyModel(t["float"][0], spec)(widths))
    # a subnet's spec (its channels cut) reads the same rows
    masks = [torch.arange(lay.out_channels) < w for lay, w in zip(spec.layers, widths)]
    sub = subnet_spec(spec, masks)
    assert float(LatencyModel(t["int8"][0], sub)(sub.widths)) == pytest.approx(float(cost(widths)))


def test_a_noisy_boundary_stays_between_zero_and_its_probe():
    """``2 join - pair`` is a difference of timings: a pair timed too fast or too slow would
    make a boundary larger than a probe (two probes chained faster than one) or negative."""
    spec = tiny_spec()
    _, _, chain = truth(spec)
    plan = plan_profile(spec, 4, boundaries=True)
    times = measured(plan, chain)
    times["pair0000"] = 0.0  # absurdly fast
    times["pair0001"] = 10.0  # absurdly slow
    table = assemble_table(plan, times, {})
    (k0, c0), (k1, c1) = plan.boundaries[:2]
    assert table.entries[k0][(c0, c0)] == pytest.approx(times["join0000"] - times["empty"])
    assert table.entries[k1][(c1, c1)] == 0.0


def test_micro_models_keep_prelu_slopes_flat_for_xnnpack():
    """A slope flattened in forward is an op on a weight, which XNNPACK's partitioner leaves
    to portable kernels; ExecuTorch rows are timed with the slope stored flat, same output."""
    from repas.deploy.micro_models import MicroModule, random_inputs
    from repas.deploy.profile import _delegable
    from repas.latency_table import conv_key

    parts = [(conv_key(3, 1, 6, 6, 1, 1, "prelu"), 3, 8), (conv_key(3, 1, 6, 6, 1, 1, "prelu"), 8, 4)]
    x = [torch.from_numpy(v) for v in random_inputs(parts)]
    with torch.no_grad():
        before = MicroModule(parts).eval()(*x)
        module = _delegable(MicroModule(parts).eval())
        assert torch.equal(module(*x), before)
    assert [module.params[n["slope"]].dim() for n in module.index] == [1, 1]


def test_a_net_is_never_predicted_faster_than_its_slowest_part():
    """Boundaries are subtracted at every tensor; where noisy rows make them large, a thin net
    would sum to a negative time. The prediction never goes below its slowest part."""
    spec = tiny_spec()
    core, _, chain = truth(spec, per_call=0.2)  # each boundary larger than the parts it joins
    plan = plan_profile(spec, 4, boundaries=True)
    model = LatencyModel(assemble_table(plan, measured(plan, chain), {}), spec)
    widths = [1, 4, 4, 4]
    slowest = max(model.parts(widths))
    assert float(model(widths)) == pytest.approx(slowest)
    assert float(model(spec.widths)) > slowest  # (a wide net: its sum, above the floor)
    counts = [torch.tensor(float(w), requires_grad=True) for w in widths]
    model(counts).backward()
    assert any(c.grad is not None and float(c.grad.abs()) > 0 for c in counts)  # the slowest part's gradient
