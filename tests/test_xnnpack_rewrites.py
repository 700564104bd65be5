"""Exact rewrites for XNNPACK: a U-Net's nearest upsampling becomes depthwise transposed
convs of ones, so that its .pte (float and int8) runs wholly in the XNNPACK delegate."""

import numpy as np
import pytest
import torch
from torch import nn

from repas.deploy.xnnpack_rewrites import rewrite_for_xnnpack
from repas.graph import fuse_user_model
from repas.models import UNet


def test_nearest_upsampling_becomes_transposed_convs_with_the_same_values():
    torch.manual_seed(0)
    net = fuse_user_model(UNet(channels=1, width=4))  # one nn.Upsample, called at two depths
    x = torch.randn(2, 1, 32, 32)
    rewritten, names = rewrite_for_xnnpack(net, x[:1])
    assert names and not any(isinstance(m, nn.Upsample) for m in rewritten.modules())
    assert any(isinstance(m, nn.Upsample) for m in net.modules())  # the given net is left as it was
    with torch.no_grad():
        assert torch.equal(rewritten(x), net(x))  # a copy by a product with 1.0: bit for bit
    up = nn.Upsample(scale_factor=2, mode="bilinear")
    assert rewrite_for_xnnpack(nn.Sequential(up), x)[1] == []  # only nearest, by an integer factor


def test_a_unets_pte_is_wholly_delegated_and_equals_pytorch(tmp_path):
    pytest.importorskip("executorch")  # CI installs it with the deploy extra
    from repas.deploy import export_models
    from repas.deploy.runner import pte_runner

    torch.manual_seed(0)
    net = fuse_user_model(UNet(channels=1, width=4)).eval()
    shape = (1, 1, 32, 32)
    made = export_models(net, tmp_path, shape, ["pte"], calibration=[torch.rand(4, 1, 32, 32)])
    checks = made["checks"]
    assert checks["pte_float_non_delegated_ops"] == [] and checks["pte_int8_non_delegated_ops"] == []
    assert checks["pte_rewritten_modules"] and checks["pte_float_max_abs_diff"] <= 1e-4
    x = torch.rand(*shape)
    with torch.no_grad():
        expected = net(x).numpy()
    got = pte_runner(tmp_path / made["files"]["pte"]["int8"])(x.numpy())
    assert np.abs(got - expected).max() <= 0.1 * np.abs(expected).max()  # int8: close, not equal
