"""BinaryGate: binary forward, straight-through gradient, frozen mode."""

import torch

from repas.supernet import BinaryGate


def test_forward_is_binary_and_zero_gate_removes_channel_exactly():
    gate = BinaryGate(3)
    with torch.no_grad():
        gate.weight.copy_(torch.tensor([0.9, 0.3, 0.50001]))
    x = torch.randn(2, 3, 4, 4) + 5.0
    y = gate(x)
    assert torch.equal(y[:, 0], x[:, 0])
    assert torch.equal(y[:, 1], torch.zeros_like(x[:, 1]))
    assert torch.equal(y[:, 2], x[:, 2])
    assert gate.mask().tolist() == [True, False, True]
    assert gate.count().item() == 2.0


def test_straight_through_gradient():
    gate = BinaryGate(3)
    with torch.no_grad():
        gate.weight.copy_(torch.tensor([0.9, 0.3, 1.7]))
    x = torch.randn(2, 3, 4, 4)
    upstream = torch.randn(2, 3, 4, 4)
    (gate(x) * upstream).sum().backward()
    # d/dw of x * b with db/dw = 1: the sum of upstream * x over batch and space, also for
    # the switched-off channel (so it can come back).
    expected = (upstream * x).sum(dim=(0, 2, 3))
    assert torch.allclose(gate.weight.grad, expected, atol=1e-5)
    assert gate.weight.grad[1].abs() > 0
    gate.weight.grad = None
    gate.count().backward()
    assert torch.equal(gate.weight.grad, torch.ones(3))


def test_frozen_gate_is_a_fixed_mask():
    gate = BinaryGate(2).freeze()
    with torch.no_grad():
        gate.weight.copy_(torch.tensor([1.0, 0.0]))
    assert not gate.weight.requires_grad
    x = torch.randn(1, 2, 3, 3, requires_grad=True)
    y = gate(x)
    assert not y[:, 1].any()
    y.sum().backward()
    assert gate.weight.grad is None
    assert torch.equal(x.grad[:, 1], torch.zeros(1, 3, 3))


def test_the_strongest_channel_stays_on_when_all_fall_under_threshold():
    gate = BinaryGate(4)
    with torch.no_grad():
        gate.weight.copy_(torch.tensor([0.1, 0.4, -0.2, 0.3]))
    assert gate.mask().tolist() == [False, True, False, False]
    assert gate.count().item() == 1.0
    x = torch.ones(1, 4, 2, 2)
    assert torch.allclose(gate(x)[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0, 0.0]))


def test_gates_folded_into_the_next_weights_equal_gating_the_activations():
    """RepNet hands each gate to the next block, which folds it into its weights; values
    must equal gating the activations themselves, and so must the gradients of gates whose
    next block has no identity branch. A gate feeding an identity branch gets a bounded
    gradient instead of BN's zero-variance one (tests/test_gate_gradients.py)."""
    from conftest import randomize_bn, tiny_spec

    from repas.supernet import build

    torch.manual_seed(0)
    model = build(tiny_spec())
    randomize_bn(model, 4)
    with torch.no_grad():
        for g in model.gate_modules():
            g.weight.copy_(torch.rand(g.weight.numel()) + 0.1)  # some channels off (< 0.5)
    model.train()
    x = torch.randn(4, 3, 12, 12)

    def reference(m, x):
        for block, gate in zip(m.blocks, m.gates):
            x = gate(block(x))
        return m.head(torch.flatten(m.pool(x), 1))

    upstream = torch.randn(4, 5)
    (model(x) * upstream).sum().backward()
    folded = [g.weight.grad.clone() for g in model.gate_modules()]
    out_folded = model(x).detach()
    model.zero_grad()
    (reference(model, x) * upstream).sum().backward()
    assert torch.allclose(reference(model, x).detach(), out_folded, atol=1e-5)
    consumers = [*model.blocks[1:], None]
    for a, g, nxt in zip(folded, model.gate_modules(), consumers):
        assert (a != 0).all()  # switched-off channels get a gradient too
        if nxt is None or "identity" not in nxt.branches:
            assert torch.allclose(a, g.weight.grad, rtol=1e-4, atol=1e-5)
        else:
            off = g.weight < 0.5
            assert off.any() and a[off].abs().max() < 10 * a[~off].abs().median()  # no gamma / sqrt(eps) blow-up


def test_a_compiled_search_step_does_not_recompile_as_the_gates_learn():
    """The mask cache's key (the weight's version) changes at every optimizer step; a graph
    that read it was guarded on it and recompiled at every step (torch.compile ran a CPU
    search slower than eager). Compiled, the gates must switch channels and compile once."""
    from torch._dynamo.utils import counters

    from repas.supernet import create_model

    torch._dynamo.reset()
    model = create_model("repvgg-fmnist", gated=True)
    model.freeze_gates(False)
    model.train()
    forward = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    graphs = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(forward(x), y) + sum(g.count() for g in model.gate_modules() if g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[-1] == graphs[1] > 0  # compiled in the first steps, never again
    assert any(not bool(g.mask().all()) for g in model.gate_modules() if g)  # the gates did move
