"""Latency tables keyed by a user model's own conv shapes (``repas.search.graph_latency``):
which layers get rows, that the model reads them exactly at the grid's points and
interpolates between them, and that a depthwise row's micro-model is the layer it stands for."""

import numpy as np
import pytest
import torch
from torch import nn

from repas.errors import RepasError
from repas.graph import GatedModel
from repas.latency_table import DEPTHWISE, OVERHEAD_KEY, LatencyTable, conv_key, head_key
from repas.search.graph_latency import GraphLatencyModel, graph_parts, graph_profile_grid, graph_rows


class Net(nn.Module):
    """Each kind of layer a table times or leaves to the overhead."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1)
        self.down = nn.Conv2d(16, 32, 3, 2, 1)
        self.dw = nn.Conv2d(32, 32, 3, 1, 1, groups=32)
        self.pw = nn.Conv2d(32, 24, 1)
        self.wide = nn.Conv2d(24, 24, (1, 7), 1, (0, 3))  # not square: no row
        self.grouped = nn.Conv2d(24, 24, 3, 1, 1, groups=4)  # grouped: no row
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.dw(torch.relu(self.down(x))))
        x = self.grouped(self.wide(torch.relu(self.pw(x))))
        return self.fc(x.mean((2, 3)))


def gated() -> GatedModel:
    return GatedModel(Net(), torch.randn(1, 3, 16, 16), ignored_layers=[])


def test_each_square_same_padded_conv_and_the_classifier_get_a_row_keyed_by_their_input():
    keys = {p.name: p.key for p in graph_parts(gated().costs)}
    assert keys == {"stem": conv_key(3, 1, 16, 16, 1, 1, "identity"),
                    "down": conv_key(3, 2, 16, 16, 1, 1, "identity"),
                    "dw": conv_key(3, 1, 8, 8, DEPTHWISE, 1, "identity"),
                    "pw": conv_key(1, 1, 8, 8, 1, 1, "identity"),
                    "fc": head_key(1, 1)}


def row_ms(key, ci, co):
    """Bilinear in the channels (a depthwise row, on its line: linear), so that
    interpolating the rows is exact anywhere on the grid."""
    if key[5] == DEPTHWISE:
        return 0.03 + 2e-3 * co
    return 0.01 * key[1] + 1e-4 * ci * co * (2 if key[2] == 2 else 1) + 1e-3 * co


def synthetic_table(model: GatedModel) -> LatencyTable:
    """Rows from ``row_ms``, boundaries linear in the channels, and an overhead."""
    parts = graph_parts(model.costs)
    grid, joins = graph_profile_grid(parts, model.spec.widths, divisor=4, points=3)
    table = LatencyTable()
    for key, ci, co in graph_rows(grid):
        table.add(key, ci, co, row_ms(key, ci, co))
    for key, cs in joins.items():
        for c in cs:
            table.add(key, c, c, 2e-4 * c)
    table.add(OVERHEAD_KEY, 0, 0, 0.05)
    return table


def by_hand(model: GatedModel, widths: list[float]) -> float:
    total = 0.05
    for p in graph_parts(model.costs):
        ci, co = p.c_in.count(widths), p.c_out.count(widths)
        total += row_ms(p.key, ci, co) - (2e-4 * co if p.key[0] == "conv" else 0.0)
    return total


def test_the_model_reads_the_rows_exactly_at_grid_points_and_interpolates_between():
    model = gated()
    table = synthetic_table(model)
    latency = GraphLatencyModel(table, model.costs, model.spec.widths)
    dense = model.spec.widths
    small = [2] * len(dense)
    lo_hi = [(a + b) / 2 for a, b in zip(small, dense)]
    for widths in (dense, small, lo_hi, [3, 5, 7, 30, 9]):
        assert latency(widths) == pytest.approx(by_hand(model, widths), rel=1e-9)
    between = latency(lo_hi)
    assert latency(small) < between < latency(dense)
    # differentiable in the gates' counts: a wider group costs more, but for the group that
    # only layers without rows carry (the 1x7 and grouped convs': the overhead has them)
    timed = {g for p in graph_parts(model.costs) for ch in (p.c_in, p.c_out) for g, _, _ in ch.parts}
    assert timed == set(range(len(dense))) - {1}
    counts = [torch.tensor(float(w), requires_grad=True) for w in lo_hi]
    total = latency(counts)
    total.backward()
    assert float(total.detach()) == pytest.approx(between, rel=1e-6)  # float32 counts
    assert [c.grad is not None and float(c.grad) > 0 for c in counts] == [g in timed for g in range(len(dense))]


def test_a_table_without_the_models_rows_is_one_clear_error():
    model = gated()
    table = synthetic_table(model)
    del table.entries[conv_key(3, 1, 8, 8, DEPTHWISE, 1, "identity")]
    with pytest.raises(RepasError, match="no rows for 3x3 conv stride 1 \\+ identity at 8x8, depthwise"):
        GraphLatencyModel(table, model.costs, model.spec.widths)
    small = synthetic_table(model)
    small.entries[conv_key(3, 2, 16, 16, 1, 1, "identity")] = {
        cc: v for cc, v in small.entries[conv_key(3, 2, 16, 16, 1, 1, "identity")].items() if cc[1] < 32}
    with pytest.raises(RepasError, match="repas profile"):
        GraphLatencyModel(small, model.costs, model.spec.widths)


def test_a_depthwise_rows_micro_model_is_a_depthwise_conv_in_torch_and_onnxruntime():
    pytest.importorskip("onnxruntime")
    from repas.deploy.micro_models import MicroModule, onnx_bytes, random_inputs
    from repas.deploy.runner import onnx_session

    part = [(conv_key(3, 1, 8, 8, DEPTHWISE, 1, "relu"), 12, 12)]
    module = MicroModule(part).eval()
    assert module.params[0].shape == (12, 1, 3, 3)
    (x,) = random_inputs(part)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    got = onnx_session(onnx_bytes(part)).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
