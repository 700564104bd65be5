"""timm's RepVGG weights in repas blocks: repas's fused net == timm's reparameterize_model."""

import pytest
import timm
import torch
from conftest import randomize_bn
from timm.utils import reparameterize_model

from repas.supernet import fuse_repnet
from repas.supernet.timm_weights import from_timm_repvgg


@pytest.mark.parametrize("name", ["repvgg_a0", "repvgg_b0"])
def test_repas_fused_equals_timm_fused(name):
    torch.manual_seed(0)
    tm = timm.create_model(name, pretrained=False, num_classes=10)
    randomize_bn(tm, seed=1)
    with torch.no_grad():  # keep activations of a 20-layer random net at a sane scale
        for m in tm.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.mul_(0.35)
    tm.eval()
    rm = from_timm_repvgg(tm).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        timm_fused = reparameterize_model(tm)(x)
        repas_multi = rm(x)
        repas_fused = fuse_repnet(rm)(x)
        timm_multi = tm(x)
    assert timm_fused.abs().max() > 1e-2  # a non-trivial output
    assert float((repas_multi - timm_multi).abs().max()) <= 1e-5
    assert float((repas_fused - timm_fused).abs().max()) <= 1e-5
