"""ONNX export is an equality too: onnxruntime == PyTorch within 1e-4."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import randomize_bn, tiny_spec
from torch import nn

pytest.importorskip("onnxruntime")

from repas.deploy import export_onnx, onnx_latency, onnx_session, run_onnx  # noqa: E402
from repas.search import extract_subnet  # noqa: E402
from repas.supernet import build, fuse_repnet  # noqa: E402


def test_fused_extracted_net_in_onnxruntime_equals_pytorch(tmp_path):
    torch.manual_seed(0)
    model = build(tiny_spec())
    randomize_bn(model)
    masks = [torch.arange(lay.out_channels) % 3 != 0 for lay in model.spec.layers]
    plain = fuse_repnet(extract_subnet(model.eval(), masks))
    path = export_onnx(plain, (1, 3, 12, 12), tmp_path / "m.onnx")
    session = onnx_session(path)
    for seed in range(3):
        x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            ref = plain(x).numpy()
        assert np.abs(run_onnx(session, x) - ref).max() <= 1e-4
    ops = {node.op_type for node in __import__("onnx").load(str(path)).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops


def test_time_calls_reports_the_statistics_of_the_measured_calls(monkeypatch):
    """Ten timed calls lasting 1..10 ms (out of order, on a fake clock): median 5.5 ms, p90 9 ms
    (the nearest rank below), min 1 ms; warm-up calls are made but not timed."""
    from repas.deploy import latency

    durations_ms = [7, 3, 10, 1, 5, 9, 2, 8, 4, 6]
    ticks = iter(t for i, d in enumerate(durations_ms) for t in (float(i), i + d / 1e3))
    monkeypatch.setattr(latency, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    calls = []
    result = latency.time_calls(lambda: calls.append(1), warmup=2, runs=10)
    assert len(calls) == 12
    assert result == {"median_ms": pytest.approx(5.5), "p90_ms": pytest.approx(9.0), "min_ms": pytest.approx(1.0),
                      "runs": 10}


def test_latency_grows_with_the_work(tmp_path):
    """onnxruntime times what it runs: at 32x32, two 3x3 convs 16 -> 64 -> 64 (47 M MACs) take
    several times as long as one 3x3 conv 16 -> 4 (0.6 M MACs, 80x less work)."""
    shape = (1, 16, 32, 32)
    light = nn.Conv2d(16, 4, 3, padding=1)
    heavy = nn.Sequential(nn.Conv2d(16, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1))
    times = {}
    for name, net in (("light", light), ("heavy", heavy)):
        path = export_onnx(net.eval(), shape, tmp_path / f"{name}.onnx")
        times[name] = onnx_latency(path, shape, threads=1, warmup=5, runs=30)
    assert times["heavy"]["threads"] == 1 and times["heavy"]["runs"] == 30
    assert times["heavy"]["min_ms"] > 3 * times["light"]["min_ms"]


def test_a_model_trained_channels_last_exports_to_executorch_and_stays_as_it_was(tmp_path):
    """channels_last training leaves NHWC weights, which XNNPACK's lowering refuses: the
    export works on an NCHW copy and leaves the caller's model alone."""
    pytest.importorskip("executorch")
    from repas.deploy import export_models
    from repas.deploy.runner import pte_runner

    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)).eval()
    net = net.to(memory_format=torch.channels_last)
    made = export_models(net, tmp_path, (1, 1, 12, 12), ["pte"])
    assert made["checks"]["pte_float_max_abs_diff"] <= 1e-5
    x = torch.randn(1, 1, 12, 12)
    with torch.no_grad():
        assert np.abs(pte_runner(tmp_path / made["files"]["pte"]["float"])(x.numpy()) - net(x).numpy()).max() < 1e-5
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_an_op_xnnpack_does_not_take_is_named_in_words_and_nothing_is_left_half_written(tmp_path):
    pytest.importorskip("executorch")
    from torch import nn

    from repas.deploy import export_models
    from repas.errors import RepasError

    # (an integer factor is rewritten into convs XNNPACK takes, repas.deploy.xnnpack_rewrites; 1.5 is not)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Upsample(scale_factor=1.5, mode="nearest"),
                        nn.Conv2d(4, 1, 3, padding=1)).eval()
    (tmp_path / "keep.txt").write_text("a file of the user's")
    with pytest.raises(RepasError, match=r"nearest upsampling \(nn.Upsample / F.interpolate"):
        export_models(net, tmp_path, (1, 1, 8, 8), ["onnx", "pte"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]  # model.onnx was written, then removed
