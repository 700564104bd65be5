"""Every fusible branch, alone and combined, equals its fused conv in eval mode.

A randomized sweep over branch combinations, kernel sizes, strides, groups (depthwise
included), dilations and random BN statistics: max |fused - multi-branch| <= 1e-5 times
the output's scale. Options a branch cannot take must raise a clear ValueError.
"""

import random

import pytest
import torch
from conftest import randomize_bn, tiny_spec

from repas.errors import RepasError
from repas.reparam import RepBlock
from repas.search import extract_subnet, gated_copy
from repas.spec import QAREPVGG_BRANCHES, ArchSpec, LayerSpec
from repas.supernet import build, create_model, fuse_repnet

ALL_BRANCHES = ["conv", "conv1x1", "conv1x1_plain", "conv1xk", "convkx1", "identity", "identity_plain", "conv1x1_kxk",
                "conv1x1_avg", "sobel_x", "sobel_y", "laplacian", "expand_squeeze", "conv_x3"]
TOL = 1e-5


def fused_error(block: RepBlock, x: torch.Tensor) -> float:
    block.eval()
    with torch.no_grad():
        ref = block(x)
        block.reparameterize()
        out = block(x)
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("name", ALL_BRANCHES)
def test_each_branch_alone_fuses_exactly(name):
    torch.manual_seed(0)
    block = RepBlock(6, 6, 3, 1, [name], act="identity")
    randomize_bn(block)
    assert fused_error(block, torch.randn(2, 6, 9, 7)) <= TOL


def test_randomized_sweep_over_combinations():
    rng, post_rng = random.Random(1234), random.Random(4321)
    tried = rejected = post_bn = 0
    for trial in range(160):
        kernel = rng.choice([1, 3, 5])
        stride = rng.choice([1, 1, 2])
        dilation = rng.choice([1, 1, 2])
        groups = rng.choice([1, 1, 2, "dw"])
        c = rng.choice([4, 6, 8])
        c_out = c if (groups == "dw" or rng.random() < 0.6) else 2 * c
        g = c if groups == "dw" else groups
        branches = rng.sample(ALL_BRANCHES, rng.randint(1, 4)) + (["post_bn"] if post_rng.random() < 0.3 else [])
        torch.manual_seed(trial)
        try:
            block = RepBlock(c, c_out, kernel, stride, branches, act=rng.choice(["relu", "identity"]), groups=g,
                             dilation=dilation)
        except ValueError as e:
            assert str(e), branches  # a message that says what is wrong
            rejected += 1
            continue
        randomize_bn(block, trial)
        x = torch.randn(2, c, rng.randint(6, 13), rng.randint(6, 13))
        err = fused_error(block, x)
        assert err <= TOL, (branches, kernel, stride, g, dilation, err)
        tried += 1
        post_bn += "post_bn" in branches
    assert tried >= 60 and rejected >= 5  # the sweep really covers both outcomes
    assert post_bn >= 15  # and QARepVGG's BN after the sum, over many combinations


@pytest.mark.parametrize("branches,kwargs,message", [
    (["identity"], dict(stride=2), "stride 1"),
    (["conv1x1_avg"], dict(dilation=2), "dilation"),
    (["sobel_x"], dict(groups=2), "groups=1"),
    (["sobel_x"], dict(kernel=1), "kernel of at least 3"),
    (["expand_squeeze"], dict(groups=2), "groups=1"),
    (["conv5x5"], dict(kernel=3), "fit"),
    (["conv7"], dict(), "unknown branch"),
    (["post_bn"], dict(), "beside at least one branch"),
])
def test_unsupported_options_are_clear_errors(branches, kwargs, message):
    args = dict(kernel=3, stride=1, groups=1, dilation=1) | kwargs
    with pytest.raises(ValueError, match=message):
        RepBlock(4, 4, args["kernel"], args["stride"], branches, groups=args["groups"], dilation=args["dilation"])


def test_spec_rejects_bad_branch_names_with_the_known_list():
    with pytest.raises(RepasError, match="known: conv, conv1x1"):
        ArchSpec(name="x", layers=[LayerSpec(4, branches=["conv", "dbb"])], in_channels=4)
    with pytest.raises(RepasError, match="gated"):
        ArchSpec(name="x", layers=[LayerSpec(4, groups=2)], in_channels=4)


@pytest.mark.parametrize("branches", [["conv", "conv1x1_kxk", "conv1x1_avg", "identity"],
                                      ["conv", "expand_squeeze", "sobel_x", "sobel_y", "laplacian"],
                                      ["conv_x3", "conv1x1", "conv1xk", "convkx1", "identity_plain"],
                                      QAREPVGG_BRANCHES])
def test_extraction_and_fusion_with_rich_branches(branches):
    spec = tiny_spec()
    d = spec.to_dict()
    for lay in d["layers"]:
        keep_identity = any(b.startswith("identity") for b in lay["branches"])
        lay["branches"] = [b for b in branches if keep_identity or not b.startswith("identity")]
    spec = ArchSpec.from_dict(d)
    torch.manual_seed(0)
    model = build(spec)
    randomize_bn(model, 1)
    masks = [torch.arange(w) % 3 != 1 for w in spec.widths]
    model.eval()
    sub = extract_subnet(model, masks)
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        ref = gated_copy(model, masks).eval()(x)
        assert float((sub(x) - ref).abs().max()) <= TOL * float(ref.abs().max())
        assert float((fuse_repnet(sub)(x) - ref).abs().max()) <= TOL * float(ref.abs().max())


def test_pas_masks_fold_in_after_fusing_at_full_width():
    torch.manual_seed(3)
    model = build(tiny_spec())
    randomize_bn(model, 3)
    masks = [torch.arange(w) % 2 == 0 for w in model.spec.widths]
    gated = gated_copy(model, masks).eval()
    fused_full = fuse_repnet(gated)  # fuse the supernet first, gates still in place
    sub = extract_subnet(fused_full, masks)  # then slice the fused kernels' rows and columns
    assert all(b.fused for b in sub.blocks)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        ref = gated(x)
        assert float((sub(x) - ref).abs().max()) <= TOL * float(ref.abs().max())


@pytest.mark.parametrize("space", ["repvgg-fmnist", "repvgg-a0", "ecbsr-m4c16"])
def test_qarepvgg_block_in_a_space_extracts_and_fuses_exactly(space):
    """QARepVGG's block (no BN on the 1x1 and identity branches, a BN after the sum) replaces a
    space's blocks, SR included; gated extraction and fusion stay equalities."""
    torch.manual_seed(0)
    model = create_model(space, branches=QAREPVGG_BRANCHES)
    assert all(b.post_bn is not None and "conv1x1_plain" in b.branches for b in model.blocks)
    randomize_bn(model, 2)
    masks = [torch.arange(w) % 4 != 1 if lay.gated else torch.ones(w, dtype=torch.bool)
             for w, lay in zip(model.spec.widths, model.spec.layers)]
    model.eval()
    x = torch.randn(2, model.spec.in_channels, 16, 16)
    with torch.no_grad():
        ref = gated_copy(model, masks).eval()(x)
        sub = extract_subnet(model, masks)
        fused = fuse_repnet(sub)
        assert all(lay.branches == ["fused"] for lay in fused.spec.layers)
        scale = float(ref.abs().max())
        assert float((sub(x) - ref).abs().max()) <= TOL * scale
        assert float((fused(x) - ref).abs().max()) <= TOL * scale
