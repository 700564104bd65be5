"""Any CNN: channel groups from the dependency graph, one gate per group, extraction equal to
the gated model, and analytic MACs / params equal to torch's own count on the extracted one."""

import pytest
import torch
import torchvision
from conftest import randomize_bn
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from repas.errors import RepasError
from repas.graph import GatedModel
from repas.models import UNet, resnet18_small


def timm_model(name: str):
    timm = pytest.importorskip("timm")
    return lambda: timm.create_model(name, num_classes=10)


MODELS = {
    "resnet18": (resnet18_small, (3, 1, 28, 28)),
    "mobilenetv2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), (3, 3, 32, 32)),
    "repvgg_a0": (timm_model("repvgg_a0"), (3, 3, 32, 32)),
    "mobileone_s0": (timm_model("mobileone_s0"), (2, 3, 16, 16)),
    "unet": (lambda: UNet(1, 16), (3, 1, 32, 32)),
}


def gated(name: str, seed: int = 0) -> tuple[GatedModel, torch.Tensor]:
    make, shape = MODELS[name]
    torch.manual_seed(seed)
    model = make().eval()
    randomize_bn(model, seed)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return GatedModel(model, x[:1], task="image" if name == "unet" else "classification"), x


def random_masks(g: GatedModel, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    masks = [torch.rand(gr.size, generator=gen) > 0.45 for gr in g.groups]
    for m in masks:
        m[torch.randint(len(m), (1,), generator=gen)] = True  # at least one channel
    return masks


def set_gates(g: GatedModel, masks: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for gate, m in zip(g.gates, masks):
            gate.weight.copy_(m.float())
    g.freeze_gates()


@pytest.mark.parametrize("name", list(MODELS))
def test_extracted_model_equals_the_gated_one_and_macs_equal_the_flop_counter(name):
    g, x = gated(name)
    for seed in (1, 2):
        masks = random_masks(g, seed)
        set_gates(g, masks)
        with torch.no_grad():
            expected = g(x)
            sub = g.extract().eval()
            got = sub(x)
        assert type(sub) is type(g.model) and not any(m._forward_hooks for m in sub.modules())  # no masks left
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
        widths = [int(m.sum()) for m in masks]
        with FlopCounterMode(display=False) as counter:
            sub(x[:1])
        assert float(g.cost("macs", widths)) == counter.get_total_flops() / 2
        assert float(g.cost("params", widths)) == sum(p.numel() for p in sub.parameters())
    dense = float(g.cost("macs", [gr.size for gr in g.groups]))
    assert float(g.cost("macs", widths)) < dense  # the masks did cut


def test_pruned_channels_are_really_gone_and_the_users_model_is_untouched():
    g, x = gated("resnet18")
    before = {k: v.clone() for k, v in g.model.state_dict().items()}
    masks = random_masks(g, 3)
    set_gates(g, masks)
    sub = g.extract()
    root = dict(sub.named_modules())[g.groups[0].root]
    assert root.weight.shape[0] == int(masks[0].sum())
    assert all(torch.equal(v, g.model.state_dict()[k]) for k, v in before.items())
    plain = g.remove()
    with torch.no_grad():  # without the hooks the user's model is dense again
        assert not torch.allclose(plain(x), sub.eval()(x))


def test_gate_counts_give_a_differentiable_cost():
    g, _ = gated("unet")
    g.freeze_gates(False)
    cost = g.cost("macs")
    cost.backward()
    assert all(gate.weight.grad is not None and bool((gate.weight.grad > 0).all()) for gate in g.gates)


def test_a_layer_repas_cannot_cut_is_a_clear_error_naming_it():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    with pytest.raises(RepasError, match=r"layer 1 \(GroupNorm\).*ignored_layers"):
        GatedModel(model, torch.randn(1, 3, 12, 12))


def test_a_grouped_conv_keeps_its_groups_each_shrunk_evenly():
    grouped = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 12, 12)
    g = GatedModel(grouped, x[:1])
    assert [gr.size for gr in g.groups] == [4, 4]  # one gate per position in a conv group of 4
    set_gates(g, [torch.tensor([True, False, True, False])] * 2)
    sub = g.extract().eval()
    assert (sub[2].groups, sub[2].in_channels, sub[2].out_channels) == (2, 4, 4)
    with torch.no_grad():
        assert torch.allclose(sub(x), g.eval()(x), atol=1e-6)


def _search(g: GatedModel, x: torch.Tensor, method: str):
    """``method`` through its hooks in a plain loop of four steps, then extracted."""
    from repas.search import create_method

    m = create_method(method, g, target=0.5, metric="macs", step=1, updates_per_epoch=4, epochs=1)
    if m.trains:
        g.train()
        opt = torch.optim.SGD(g.model.parameters(), lr=0.01)
        gates = torch.optim.SGD(g.gate_parameters(), lr=0.5) if m.learns_gates else None
        for update in range(1, 5):
            loss = g(x).square().mean() + m.penalty()
            opt.zero_grad()
            if gates:
                gates.zero_grad()
            loss.backward()
            opt.step()
            if gates:
                gates.step()
            m.after_step(update)
    inputs = torch.randn(64, *x.shape[1:], generator=torch.Generator().manual_seed(5)) if m.needs_inputs else None
    return m, m.extract(inputs)


ANY = ["uniform", "l1", "eagleeye", "taylor", "pas"]


@pytest.mark.parametrize("name, method", [("unet", m) for m in ANY] + [("resnet18", "pas")])
def test_every_method_for_any_cnn_meets_half_the_macs_and_extracts_exactly(name, method, monkeypatch):
    from repas.search.methods.adaptive_bn import AdaptiveBN

    monkeypatch.setattr(AdaptiveBN, "candidates", 8)  # 12 candidates in all: the same code, a fifth of the time
    monkeypatch.setattr(AdaptiveBN, "mutations", 4)
    g, x = gated(name)
    m, sub = _search(g, x, method)
    widths = [int(k.sum()) for k in g.masks()]
    cost = float(g.cost("macs", widths))
    assert 0.97 * m.budget.target <= cost <= m.budget.target
    assert m.budget.target == pytest.approx(0.5 * float(g.cost("macs", g.spec.widths)))
    g.eval()
    with torch.no_grad():
        expected = g(x)
        assert torch.allclose(sub.eval()(x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_a_method_that_reads_supernet_blocks_says_it_cannot_prune_a_user_model():
    from repas.search import create_method

    g, _ = gated("unet")
    with pytest.raises(RepasError, match="slimming reads the blocks of a repas supernet.*methods for any CNN: "
                                         "eagleeye, evolution, l1, l1-layer, pas, pas-raw, taylor, uniform"):
        create_method("slimming", g, target=0.5)


@pytest.mark.parametrize("name, builder, kwargs", [("resnet18", "repas.models:resnet18_small", {}),
                                                   ("unet", "repas.models:UNet", {"channels": 1, "width": 16})])
def test_a_pruned_model_saves_without_pickles_and_loads_through_its_builder(name, builder, kwargs, tmp_path):
    from repas.graph import load_pruned, save_pruned

    g, x = gated(name)
    set_gates(g, random_masks(g, 4))
    sub = g.extract().eval()
    save_pruned(sub, tmp_path, g, builder=builder, kwargs=kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned.json", "weights.safetensors"]
    loaded = load_pruned(tmp_path)
    assert type(loaded) is type(sub)
    with torch.no_grad():
        assert torch.equal(loaded(x), sub(x))
    save_pruned(sub, tmp_path / "b", g, builder="nowhere:model")
    with pytest.raises(RepasError, match="builder 'nowhere:model' is not one repas loads by default"):
        load_pruned(tmp_path / "b")
    with pytest.raises(RepasError, match="cannot import the builder 'nowhere:model'"):
        load_pruned(tmp_path / "b", trust_builder=True)


@pytest.mark.parametrize("name", ["resnet18", "unet", "mobileone_s0"])
def test_the_pruned_model_fuses_and_exports_to_a_verified_onnx(name, tmp_path):
    from repas.deploy import export_models
    from repas.graph import fuse_user_model

    g, x = gated(name)
    set_gates(g, random_masks(g, 6))
    sub = g.extract().eval()
    fused = fuse_user_model(sub)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())  # every BN folded
    with torch.no_grad():
        expected = sub(x)
        assert torch.allclose(fused(x), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    if name == "mobileone_s0":  # timm's reparameterisation: one conv per block
        assert sum(isinstance(m, nn.Conv2d) for m in fused.modules()) < sum(isinstance(m, nn.Conv2d)
                                                                              for m in sub.modules())
    pytest.importorskip("onnxruntime")
    # random BN statistics blow MobileOne's outputs up to ~1e10: the tolerance is relative
    tolerance = 1e-4 * max(1.0, float(expected.abs().max()))
    result = export_models(fused, tmp_path, (1, *x.shape[1:]), ["onnx"], tolerance=tolerance)
    assert result["checks"]["onnx_float_max_abs_diff"] <= tolerance


def test_a_deep_copy_masks_with_its_own_gates():
    import copy

    g, x = gated("unet")
    set_gates(g, random_masks(g, 3))  # masks of its own, so that losing its hooks would change its output
    with torch.no_grad():
        before = g(x)
    twin = copy.deepcopy(g)  # what timm's EMA does to the model it averages
    set_gates(twin, random_masks(twin, 7))
    with torch.no_grad():
        assert not torch.allclose(twin(x), g(x))  # the copy's masks act on the copy alone
        assert torch.allclose(twin(x), twin.extract()(x), rtol=1e-5, atol=1e-5)
        twin.remove()  # takes the copy's hooks off, not the original's
        assert torch.equal(g(x), before) and any(m._forward_hooks for m in g.model.modules())
        assert not any(m._forward_hooks for m in twin.model.modules())
