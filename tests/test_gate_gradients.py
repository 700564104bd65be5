"""A gate's gradient through an identity branch: the same forward pass (and BN statistics)
as BN(x * s), but an off gate no longer gets BN's zero-variance gradient, scaled by
gamma / sqrt(eps)."""

import copy

import torch
from conftest import randomize_bn

from repas.reparam import RepBlock
from repas.supernet import BinaryGate


def gated_block(seed: int = 0):
    torch.manual_seed(seed)
    block = RepBlock(8, 8, branches=["conv", "conv1x1", "identity"]).train()
    randomize_bn(block, seed)
    gate = BinaryGate(8)
    with torch.no_grad():
        gate.weight[:3] = 0.2  # three channels off
    return block, gate


def test_same_output_and_statistics_as_gating_the_input():
    block, gate = gated_block()
    reference = copy.deepcopy(block)
    x = torch.randn(16, 8, 10, 10)
    y = block(x, gate.binary())
    y_ref = reference(x * gate.mask().float().view(1, -1, 1, 1))
    assert torch.allclose(y, y_ref, atol=1e-5, rtol=1e-5)
    bn, bn_ref = block.branches["identity"].bn, reference.branches["identity"].bn
    assert torch.allclose(bn.running_mean, bn_ref.running_mean) and torch.allclose(bn.running_var, bn_ref.running_var)


def test_an_off_gate_before_an_identity_branch_gets_a_bounded_gradient():
    block, gate = gated_block()
    reference, ref_gate = copy.deepcopy(block), copy.deepcopy(gate)
    x, r = torch.randn(16, 8, 10, 10), torch.randn(16, 8, 10, 10)
    y = block(x, gate.binary())
    (y * r).sum().backward()
    # the previous formula: the identity branch normalises x * s, gradient through s included
    (reference(x * ref_gate.binary().view(1, -1, 1, 1)) * r).sum().backward()
    off, on = gate.weight.grad[:3].abs(), gate.weight.grad[3:].abs()
    ref_off, ref_on = ref_gate.weight.grad[:3].abs(), ref_gate.weight.grad[3:].abs()
    assert ref_off.max() > 30 * ref_on.mean()  # what was wrong: the off gates' gradient explodes
    assert off.max() < 5 * on.mean()  # now of the order of the on gates'
    # On gates: training-mode BN is blind to a scale of its input, so through BN(x * s) the
    # identity path told an on gate nothing; now it adds what the path contributes,
    # gamma * sum(dL/dy * x_hat), and the conv branches' part is as before.
    bn = block.branches["identity"].bn
    x_hat = torch.nn.functional.batch_norm(x, None, None, training=True, eps=bn.eps)
    grad_out = r * (y > 0)  # dL/d(sum of branches), through the ReLU
    heard = (bn.weight.detach().view(1, -1, 1, 1) * x_hat * grad_out).sum(dim=(0, 2, 3))
    assert torch.allclose(gate.weight.grad[3:], ref_gate.weight.grad[3:] + heard[3:], rtol=1e-3, atol=1e-2)
