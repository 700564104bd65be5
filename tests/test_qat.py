"""Quantization-aware training and calibration observers (repas.deploy.qat).

The contract: the int8 net that ships is the net that trained (fake-quant forward ==
PyTorch's int8 reference, and the .pte == that reference within one output step), and the
activation observer is a real choice with a clear error for an unknown name."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_bn, tiny_spec

from repas.errors import RepasError
from repas.stages.qat import MultiBranchQAT, prepare_qat_multibranch
from repas.supernet import build, fuse

needs_executorch = pytest.mark.skipif(importlib.util.find_spec("executorch") is None,
                                      reason="ExecuTorch is not installed (pip install 'repas[mobile]')")
SIZE = 12


def _net(seed: int = 0) -> torch.nn.Module:
    """A tiny 1-channel RepNet with random BN statistics, one first-layer filter all
    positive (a one-sign weight channel: where stock PT2E QAT and convert disagree)."""
    torch.manual_seed(seed)
    net = build(tiny_spec(1, SIZE, 5))
    randomize_bn(net, seed)
    with torch.no_grad():
        w = net.blocks[0].branches["conv"].conv.weight
        w[0] = w[0].abs() + 0.05
    return net.eval()


def _task(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels a small net can learn: the label is the brightest of 5 bands."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, SIZE, SIZE, generator=gen)
    y = torch.randint(0, 5, (n,), generator=gen)
    for i in range(n):
        x[i, 0, 2 * int(y[i]):2 * int(y[i]) + 2] += 2.0
    return x, y


def _output_scale(int8: torch.fx.GraphModule) -> float:
    """The scale of the last quantize node: one step of the int8 net's output."""
    q = [n for n in int8.graph.nodes if n.target is torch.ops.quantized_decomposed.quantize_per_tensor.default]
    return float(q[-1].args[1])


def _train(prepared: torch.nn.Module, steps: int = 4, freeze_at: int = 2) -> list:
    from repas.deploy import qat

    x, y = _task()
    opt = torch.optim.SGD([p for p in prepared.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    prepared.train()
    frozen = None
    for step in range(steps):
        if step == freeze_at:
            qat.freeze_observers(prepared)
            frozen = qat.quantization_parameters(prepared if not isinstance(prepared, MultiBranchQAT)
                                                 else prepared.graph)
        i = torch.arange(step * 16, step * 16 + 16) % len(y)
        loss = F.cross_entropy(prepared(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    prepared.eval()
    return frozen


def test_unknown_observer_is_one_clear_line():
    from repas.deploy import qat

    with pytest.raises(RepasError) as e:
        qat.quantize_ptq(fuse(_net()), torch.zeros(1, 1, SIZE, SIZE), [torch.zeros(2, 1, SIZE, SIZE)], "kl")
    msg = str(e.value)
    assert "\n" not in msg and "'kl'" in msg and "minmax, histogram, percentile, mse" in msg


@needs_executorch
def test_observer_choice_changes_quantization_parameters():
    from repas.deploy import qat

    fused = fuse(_net())
    x = torch.randn(512, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    x[0, 0, 0, 0] = 40.0  # one outlier: min-max spends the whole range on it
    example = torch.zeros(1, 1, SIZE, SIZE)

    int8 = qat.quantize_ptq(fused, example, x.split(128), "percentile")
    q = next(n for n in int8.graph.nodes if n.target is torch.ops.quantized_decomposed.quantize_per_tensor.default)
    minmax = (40.0 - float(x.min())) / 255  # what min-max gives the input: the whole observed range
    assert float(q.args[1]) < 0.5 * minmax  # the percentile observer clips the outlier
    observers = qat._observer_classes()
    scales = {}
    for name in qat.OBSERVERS:  # the same data through each observer alone: four different ranges
        obs = observers[name](dtype=torch.int8, quant_min=-128, quant_max=127, eps=2 ** -12)
        obs(x)
        scales[name] = float(obs.calculate_qparams()[0])
    assert scales["minmax"] == pytest.approx(minmax, rel=1e-4)
    assert len(set(scales.values())) == len(scales), scales
    assert scales["percentile"] < 0.5 * minmax and max(scales["histogram"], scales["mse"]) <= minmax, scales


@needs_executorch
def test_qat_trains_and_the_pte_is_the_net_that_trained():
    from repas.deploy import qat
    from repas.deploy.bundle import non_delegated_ops
    from repas.deploy.executorch_export import lower_program
    from repas.deploy.runner import load_pte

    fused = fuse(_net())
    example = torch.zeros(1, 1, SIZE, SIZE)
    prepared = qat.prepare_qat(fused, example)
    before = {k: v.detach().clone() for k, v in prepared.named_parameters()}
    frozen = _train(prepared)
    assert any(not torch.equal(before[k], v) for k, v in prepared.named_parameters())  # it trained
    after = qat.quantization_parameters(prepared)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(frozen, after))

    int8 = qat.convert_qat(prepared)
    x = _task(32, seed=3)[0]
    with torch.no_grad():
        trained, reference = prepared(x), int8(x)
    # convert recalibrates nothing and quantizes each weight as training did: equal outputs
    assert torch.allclose(trained, reference, atol=1e-5), float((trained - reference).abs().max())

    program, edge = lower_program(int8, (example,))
    assert non_delegated_ops(edge) == []
    method = load_pte(program)
    pte = torch.cat([method.execute([x[i:i + 1]])[0] for i in range(len(x))])
    # XNNPACK's fixed-point requantization may round an output one step away, no more
    step = _output_scale(int8)
    assert float((pte - reference).abs().max()) <= 1.01 * step, (float((pte - reference).abs().max()), step)


@needs_executorch
def test_multibranch_qat_trains_branches_through_the_fused_kernel():
    from repas.deploy import qat

    net = _net(seed=1)
    example = torch.zeros(1, 1, SIZE, SIZE)
    prepared = prepare_qat_multibranch(net, example)
    x = _task(16, seed=4)[0]
    with torch.no_grad():  # fake-quant off: the float fused net, computed from the branches
        prepared.graph.apply(qat._pt2e()["pt2e"].disable_fake_quant)
        assert torch.allclose(prepared(x), fuse(net)(x), atol=1e-5)
        prepared.graph.apply(qat._pt2e()["pt2e"].enable_fake_quant)
    one_by_one = prepared.net.blocks[2].branches["conv1x1"].conv.weight
    start = one_by_one.detach().clone()
    _train(prepared)
    assert not torch.equal(start, one_by_one.detach())  # the branches train, not a fused copy
    int8 = qat.convert_qat(prepared)
    with torch.no_grad():
        assert torch.allclose(prepared(x), int8(x), atol=1e-5)  # the int8 net is the one trained


@needs_executorch
@pytest.mark.parametrize("free_size", [True, False])
def test_an_image_to_image_net_trained_on_patches_ships_at_its_export_size(free_size):
    """SR and denoising nets train on patches and ship at a larger export shape: the QAT graph
    must convert and lower there (before, the graph was fixed to the training patch's size)."""
    from repas.deploy import qat
    from repas.deploy.executorch_export import lower_program
    from repas.deploy.runner import load_pte
    from repas.supernet import create_model

    torch.manual_seed(0)
    sr = fuse(create_model("ecbsr-m4c16", gated=False)).eval()
    prepared = qat.prepare_qat(sr, torch.randn(2, 1, 16, 16), free_size=free_size)
    # activation ranges: global min-max over the patches seen (whole images are wider than a
    # patch's moving average), per-channel weight ranges as before
    kinds = {type(m.activation_post_process).__name__ for m in qat._fake_quant_modules(prepared)}
    assert kinds == ({"MinMaxObserver", "MovingAveragePerChannelMinMaxObserver"} if free_size else
                     {"MovingAverageMinMaxObserver", "MovingAveragePerChannelMinMaxObserver"})
    prepared.train()
    F.l1_loss(prepared(torch.rand(2, 1, 16, 16)), torch.rand(2, 1, 32, 32)).backward()
    prepared.eval()
    int8 = qat.convert_qat(prepared)
    x = torch.rand(1, 1, 24, 40)
    if not free_size:
        with pytest.raises(Exception, match=r"Guard failed: x.size\(\)\[2\] == 16"):  # the patch size guard
            lower_program(int8, (x,))
        return
    program, _ = lower_program(int8, (x,))
    got = load_pte(program).execute([x])[0]
    with torch.no_grad():
        reference = int8(x)
    assert got.shape == (1, 1, 48, 80)
    assert float((got - reference).abs().max()) <= 1.01 * _output_scale(int8)
