"""ONNX export is an equality too: onnxruntime == PyTorch within 1e-4."""

import numpy as np
import pytest
import torch
from conftest import randomize_bn, tiny_spec

pytest.importorskip("onnxruntime")

from repas.deploy import export_onnx, onnx_latency, onnx_session, run_onnx  # noqa: E402
from repas.search import extract_subnet  # noqa: E402
from repas.supernet import build, create_supernet_spec, fuse_net  # noqa: E402


def test_fused_extracted_net_in_onnxruntime_equals_pytorch(tmp_path):
    torch.manual_seed(0)
    model = build(tiny_spec())
    randomize_bn(model)
    masks = [torch.arange(lay.out_channels) % 3 != 0 for lay in model.spec.layers]
    plain = fuse_net(extract_subnet(model.eval(), masks))
    path = export_onnx(plain, (1, 3, 12, 12), tmp_path / "m.onnx")
    session = onnx_session(path)
    for seed in range(3):
        x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            ref = plain(x).numpy()
        assert np.abs(run_onnx(session, x) - ref).max() <= 1e-4
    ops = {node.op_type for node in __import__("onnx").load(str(path)).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops


def test_latency_is_measured(tmp_path):
    spec = create_supernet_spec("repvgg-fmnist")
    path = export_onnx(fuse_net(build(spec)), (1, 1, 28, 28), tmp_path / "m.onnx")
    result = onnx_latency(path, (1, 1, 28, 28), threads=1, warmup=3, runs=20)
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["p90_ms"] and result["threads"] == 1
