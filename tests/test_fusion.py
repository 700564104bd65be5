"""Fusion is an equality: fused conv == multi-branch block in eval mode (<= 1e-5 relative)."""

import itertools
import random

import pytest
import torch
from conftest import randomize_bn, tiny_spec
from timm.utils import reparameterize_model

from repas.reparam import RepBlock, reparameterize_blocks
from repas.reparam.fusion import fuse_conv_bn
from repas.supernet import build, fuse_repnet, fused_spec, load_model, save_model

REL_TOL = 1e-5


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


CASES = [
    (branches, kernel, stride)
    for branches, kernel, stride in itertools.product(
        [["conv"], ["conv", "conv1x1"], ["conv", "identity"], ["conv", "conv1x1", "identity"], ["conv1x1"],
         ["conv", "conv1x1_plain", "identity_plain", "post_bn"]],  # the last: QARepVGG's block
        [1, 3, 5], [1, 2])
    if not (any(b.startswith("identity") for b in branches) and stride != 1)
    and not (kernel == 1 and branches == ["conv1x1"])
]


@pytest.mark.parametrize("branches,kernel,stride", CASES)
def test_block_fuses_exactly(branches, kernel, stride):
    torch.manual_seed(len(branches) * 10 + kernel + stride)
    c = 6
    block = RepBlock(c, c, kernel, stride, branches)
    randomize_bn(block, seed=kernel * stride)
    block.eval()
    x = torch.randn(3, c, 11, 9)
    ref = block(x)
    conv = block.reparameterize()
    assert block.fused and len(block.branches) == 0
    assert rel_diff(block(x), ref) <= REL_TOL
    assert isinstance(conv, torch.nn.Conv2d) and conv.weight.shape == (c, c, kernel, kernel)


def test_identity_branch_with_index_map_fuses_exactly():
    rng = random.Random(0)
    for trial in range(5):
        c_in, c_out = rng.randint(2, 7), rng.randint(2, 7)
        index_map = [rng.choice([-1] + list(range(c_in))) for _ in range(c_out)]
        block = RepBlock(c_in, c_out, 3, 1, ["conv", "conv1x1", "identity"], identity_map=index_map)
        randomize_bn(block, seed=trial)
        block.eval()
        x = torch.randn(2, c_in, 8, 8)
        ref = block(x)
        block.reparameterize()
        assert rel_diff(block(x), ref) <= REL_TOL


def test_fuse_conv_bn_matches_bn_of_conv():
    conv = torch.nn.Conv2d(4, 5, 3, padding=1, bias=False)
    bn = torch.nn.BatchNorm2d(5)
    randomize_bn(bn)
    bn.eval()
    k, b = fuse_conv_bn(conv.weight, bn)
    x = torch.randn(2, 4, 6, 6)
    fused = torch.nn.functional.conv2d(x, k, b, padding=1)
    assert rel_diff(fused, bn(conv(x))) <= REL_TOL


def test_whole_net_fuses_and_reloads_from_spec(tmp_path):
    torch.manual_seed(0)
    model = build(tiny_spec())
    randomize_bn(model)
    model.eval()
    x = torch.randn(4, 3, 12, 12)
    ref = model(x)
    fused = fuse_repnet(model)
    assert fused.spec == fused_spec(model.spec)
    assert all(b.fused for b in fused.blocks)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert rel_diff(fused(x), ref) <= REL_TOL
    save_model(fused, tmp_path / "m")
    assert rel_diff(load_model(tmp_path / "m").eval()(x), ref) <= REL_TOL


def test_timm_reparameterize_model_fuses_repas_nets():
    torch.manual_seed(1)
    model = build(tiny_spec())
    randomize_bn(model, seed=3)
    model.eval()
    x = torch.randn(2, 3, 12, 12)
    ref = model(x)
    fused = reparameterize_model(model)
    assert all(b.fused for b in fused.blocks)
    assert rel_diff(fused(x), ref) <= REL_TOL
    assert rel_diff(reparameterize_blocks(model)(x), ref) <= REL_TOL
