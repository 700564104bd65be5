"""Models beyond plain convs, as the coverage walk (scripts/coverage_models.py) meets them in
torchvision: grouped convs (ResNeXt, RegNet), channel shuffle (ShuffleNetV2), MNASNet,
LayerNorm-coupled channels (ConvNeXt) and attention (ViT). Each is gated, cut at random
masks and at half its MACs, and must be exactly the gated model, with MACs equal to torch's
flop counter (attention counted by its plain matmuls)."""

import pytest
import torch
from conftest import randomize_bn
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import mnasnet0_5, resnet, shufflenetv2
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.regnet import BlockParams, RegNet
from torchvision.models.vision_transformer import VisionTransformer

from repas.errors import RepasError
from repas.graph import GatedModel


def resnext():
    return resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=8, num_classes=10)


def regnet():
    return RegNet(BlockParams.from_init_params(depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25),
                  num_classes=10)


def shufflenet():
    return shufflenetv2.ShuffleNetV2([2, 2, 1], [8, 16, 32, 64, 128], num_classes=10)


def convnext():
    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)


def vit():
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=256,
                             num_classes=10)


MODELS = {"resnext": resnext, "regnet": regnet, "shufflenet": shufflenet, "mnasnet": lambda: mnasnet0_5(num_classes=10),
          "convnext": convnext, "vit": vit}


def gated(name: str) -> tuple[GatedModel, torch.Tensor]:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    randomize_bn(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("layer_scale"):  # 1e-6 at init: it would hide every block
                p.copy_(torch.rand(p.shape) + 0.5)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return GatedModel(model, x[:1]), x


def counted_macs(model: nn.Module, x: torch.Tensor) -> float:
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return counter.get_total_flops() / 2


def set_masks(g: GatedModel, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    masks = [torch.rand(gr.size, generator=gen) > 0.45 for gr in g.groups]
    for m in masks:
        m[torch.randint(len(m), (1,), generator=gen)] = True
    with torch.no_grad():
        for gate, m in zip(g.gates, masks):
            gate.weight.copy_(m.float())
    g.freeze_gates()
    return masks


def assert_exact(g: GatedModel, x: torch.Tensor, masks: list[torch.Tensor]) -> nn.Module:
    g.eval()
    with torch.no_grad():
        expected = g(x)
        sub = g.extract(masks).eval()
        got = sub(x)
    assert type(sub) is type(g.model)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    widths = [int(m.sum()) for m in masks]
    assert float(g.cost("macs", widths)) == pytest.approx(counted_macs(sub, x[:1]), rel=1e-9)
    return sub


@pytest.mark.parametrize("name", list(MODELS))
def test_the_model_extracts_exactly_at_random_masks_and_at_half_its_macs(name):
    from repas.search import create_method

    g, x = gated(name)
    assert float(g.cost("macs", g.spec.widths)) == pytest.approx(counted_macs(g.model, x[:1]), rel=1e-9)
    assert_exact(g, x, set_masks(g, 1))
    m = create_method("uniform", g, target=0.5)
    m.prune()
    masks = g.masks()
    assert_exact(g, x, masks)
    cost = float(g.cost("macs", [int(k.sum()) for k in masks]))
    assert 0.97 * m.budget.target <= cost <= m.budget.target


def test_grouped_convs_keep_their_groups_each_shrunk_evenly():
    g, x = gated("resnext")
    sub = assert_exact(g, x, set_masks(g, 2))
    dense, cut = dict(g.model.named_modules()), dict(sub.named_modules())
    grouped = [n for n, m in dense.items() if isinstance(m, nn.Conv2d) and m.groups == 4]
    assert grouped
    for n in grouped:
        assert cut[n].groups == 4 and cut[n].in_channels % 4 == 0 and cut[n].out_channels % 4 == 0
    assert any(cut[n].out_channels < dense[n].out_channels for n in grouped)  # they were cut
    # one gate channel per position in a conv group: 8 channels a group, 8 gate channels
    root = next(gr for gr in g.groups if any(mb.name == grouped[0] for mb in gr.members))
    assert root.size == 8 and root.slots is not None and len(root.slots) == 32


def test_channel_shuffle_keeps_the_shuffled_channels_and_cuts_the_branches():
    g, x = gated("shufflenet")
    sub = assert_exact(g, x, set_masks(g, 3))
    cut = {mb.name for gr in g.groups for mb in gr.members if mb.side == "out"}
    assert "stage2.0.branch2.0" in cut  # a branch's inner channels are cut
    assert "stage2.0.branch2.5" not in cut  # its output goes through the shuffle: it stays whole
    assert sub.stage2[0].branch2[5].out_channels == g.model.stage2[0].branch2[5].out_channels


def test_layernorm_and_attention_channels_stay_whole_and_the_mlp_is_cut():
    g, x = gated("vit")
    assert sorted(gr.root for gr in g.groups) == [f"encoder.layers.encoder_layer_{i}.mlp.0" for i in range(2)]
    g2, _ = gated("convnext")
    assert all(isinstance(dict(g2.model.named_modules())[gr.root], nn.Linear | nn.Conv2d) for gr in g2.groups)
    assert not any(gr.root.endswith(".block.0") for gr in g2.groups)  # depthwise convs on the LayerNorm's channels


def test_a_pruned_mnasnet_saves_and_loads(tmp_path):
    from repas.graph import load_pruned, save_pruned

    g, x = gated("mnasnet")
    sub = assert_exact(g, x, set_masks(g, 4))
    save_pruned(sub, tmp_path, g, builder="torchvision.models:mnasnet0_5", kwargs={"num_classes": 10})
    loaded = load_pruned(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(x), sub(x))


def test_a_model_with_nothing_repas_can_cut_says_what_to_do():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    with pytest.raises(RepasError, match=r"no prunable channel group: layer 1 \(GroupNorm\).*replace such layers"):
        GatedModel(model, torch.randn(1, 3, 12, 12))
