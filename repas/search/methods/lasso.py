"""LASSO channel selection with least-squares reconstruction (He et al., 2017), usable
without retraining.

Channel c of layer l is judged by what it contributes to the layer that reads it: on
sampled positions of sampled feature maps, the next layer's pre-activation output is the
sum of per-channel contributions ``Z_c``, and LASSO on ``Y ~ sum_c beta_c Z_c`` drops
channels as its penalty grows. A channel's score is the penalty at which it enters the
LASSO path, over the largest one (in (0, 1], comparable across layers); one global
threshold on the scores meets the budget. Then, layer by layer in the pruned net, the next
layer's equivalent kernel over the kept channels is refit by least squares to reproduce
the dense net's output, and written back into its main k x k branch, exactly (eval mode).
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from repas.errors import RepasError
from repas.reparam import RepBlock
from repas.reparam.branches import ConvBN
from repas.reparam.fusion import fuse_conv_bn
from repas.search.allocation import global_masks
from repas.search.budget import Budget
from repas.search.importance import gated_layers
from repas.search.methods.registry import PruningMethod, register_method
from repas.supernet.net import RepNet

Masks = list[torch.Tensor]
ROWS = 2048  # sampled output positions per layer


def _sklearn_lasso_path():
    try:
        from sklearn.linear_model import lasso_path
    except ImportError:
        raise RepasError("method lasso needs scikit-learn: pip install 'repas[baselines]'") from None
    return lasso_path


@torch.no_grad()
def _block_inputs(model: RepNet, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Every block's effective input (gate of the previous layer applied), and the pooled,
    gated features the classifier reads (None for SR)."""
    inputs: list[torch.Tensor] = []
    hooks = [b.register_forward_pre_hook(
        lambda m, args: inputs.append(args[0] if len(args) < 2 or args[1] is None
                                      else args[0] * args[1].view(1, -1, 1, 1)))
             for b in model.blocks]
    try:
        y, scale = model.features(x)
    finally:
        for h in hooks:
            h.remove()
    if model.super_resolution:
        return inputs, None
    pooled = torch.flatten(model.pool(y), 1)
    return inputs, pooled if scale is None else pooled * scale


def _patches(block: RepBlock, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(rows, C, k*k): the input patches the block's conv sees at the sampled positions."""
    k = block.kernel
    cols = F.unfold(x, k, dilation=block.dilation, padding=block.dilation * (k // 2), stride=block.stride)
    n, ck2, positions = cols.shape
    flat = cols.permute(0, 2, 1).reshape(n * positions, ck2)
    return flat[rows % (n * positions)].view(len(rows), x.shape[1], k * k)


def _sample(count: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2**62, (count,), generator=generator)


def _consumer(model: RepNet, i: int) -> RepBlock | None:
    return model.blocks[i + 1] if i + 1 < len(model.blocks) else None


@torch.no_grad()
def lasso_scores(model: RepNet, x: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
    """Each gated layer's channels scored by the LASSO penalty at which they enter the path."""
    lasso_path = _sklearn_lasso_path()
    gen = torch.Generator().manual_seed(seed)
    inputs, pooled = _block_inputs(model, x)
    scores = [torch.ones(lay.out_channels) for lay in model.spec.layers]
    for i in gated_layers(model):
        nxt = _consumer(model, i)
        if nxt is None:  # the classifier reads channel c through column c of its weights
            z = pooled.t().unsqueeze(2) * model.head.weight.t().unsqueeze(1)  # (C, N, classes)
        elif nxt.groups != 1:
            raise RepasError(f"method lasso: layer {i + 1} is a grouped conv; its input channels are not separable")
        else:
            kernel = nxt.equivalent_kernel_bias()[0]
            p = _patches(nxt, inputs[i + 1], _sample(ROWS, gen))  # (R, C, k*k)
            z = torch.einsum("rck,ock->cro", p, kernel.flatten(2))  # (C, R, out)
        z = z.flatten(1).t().double().numpy()  # (samples, C)
        y = z.sum(axis=1)
        alphas, coefs, _ = lasso_path(z, y, alphas=60, eps=1e-4, positive=True)
        entered = coefs > 1e-10
        first = torch.from_numpy(entered.argmax(axis=1))  # the first (largest) alpha with the channel in
        score = torch.from_numpy(alphas)[first] / float(alphas[0])
        score[~torch.from_numpy(entered.any(axis=1))] = 0.0
        # ties (channels entering together) are broken by the least-squares coefficient
        scores[i] = score.float() + 1e-6 * torch.from_numpy(coefs[:, -1]).float()
    return scores


def _main_branch(block: RepBlock, layer: int) -> ConvBN:
    for branch in block.branches.values():
        if isinstance(branch, ConvBN) and branch.conv.kernel_size == (block.kernel, block.kernel) \
                and branch.conv.groups == block.groups:
            return branch
    raise RepasError(f"method lasso: layer {layer} has no k x k conv branch to write the reconstruction into")


@torch.no_grad()
def write_kernel(block: RepBlock, kernel: torch.Tensor, bias: torch.Tensor, layer: int) -> None:
    """Make the block's equivalent kernel and bias ``kernel``, ``bias`` by changing its main
    k x k conv+BN branch only (exact in eval mode)."""
    old_k, old_b = block.equivalent_kernel_bias()
    branch = _main_branch(block, layer)
    d_kernel, d_bias = kernel - old_k, bias - old_b
    if block.post_bn is not None:  # the change goes in before the BN after the sum scales it
        post, _ = fuse_conv_bn(None, block.post_bn)
        post = _nonzero(post)
        d_kernel, d_bias = d_kernel / post.view(-1, 1, 1, 1), d_bias / post
    if branch.bn is None:
        branch.conv.weight += d_kernel
        branch.conv.bias += d_bias
        return
    scale = _nonzero(branch.bn.weight / torch.sqrt(branch.bn.running_var + branch.bn.eps))
    branch.conv.weight += d_kernel / scale.view(-1, 1, 1, 1)
    branch.bn.bias += d_bias


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale.abs() < 1e-4, torch.full_like(scale, 1e-4).copysign(scale), scale)


def _solve(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Least squares with a tiny ridge (collinear patches), in float64."""
    a, y = a.double(), y.double()
    ridge = 1e-6 * a.pow(2).sum(0).mean()
    gram = a.t() @ a + ridge * torch.eye(a.shape[1], dtype=a.dtype)
    return torch.linalg.solve(gram, a.t() @ y).float()


@torch.no_grad()
def reconstruct(model: RepNet, masks: Masks, x: torch.Tensor, seed: int = 0, seconds: float | None = None) -> int:
    """Refit, layer by layer, what reads each pruned layer so that the pruned net (gates at
    ``masks``) reproduces the dense net's pre-activation outputs on ``x``. With ``seconds``,
    no layer is started after that time (the earlier ones matter most: their errors flow on).
    Returns the number of layers refit."""
    started = time.perf_counter()
    done = 0
    gen = torch.Generator().manual_seed(seed)
    dense = copy.deepcopy(model)
    dense_inputs, dense_pooled = _block_inputs(dense, x)
    for g, m in zip(model.gate_modules(), masks):
        if g is not None:
            g.weight.copy_(m.float())
            g.freeze()
    for i in gated_layers(model):
        if seconds is not None and time.perf_counter() - started >= seconds:
            break
        done += 1
        kept = torch.nonzero(masks[i]).flatten()
        inputs, pooled = _block_inputs(model, x)
        nxt = _consumer(model, i)
        if nxt is None:
            target = dense_pooled @ dense.head.weight.t()
            a = torch.cat([pooled[:, kept], torch.ones(len(pooled), 1)], dim=1)
            sol = _solve(a, target)
            model.head.weight.zero_()
            model.head.weight[:, kept] = sol[:-1].t()
            model.head.bias.copy_(dense.head.bias + sol[-1])
            continue
        kernel, bias = nxt.equivalent_kernel_bias()
        rows = _sample(4 * ROWS, gen)
        target = torch.einsum("rck,ock->ro", _patches(nxt, dense_inputs[i + 1], rows), kernel.flatten(2))
        p = _patches(nxt, inputs[i + 1], rows)[:, kept].flatten(1)
        sol = _solve(torch.cat([p, torch.ones(len(p), 1)], dim=1), target)
        new = torch.zeros_like(kernel)
        new[:, kept] = sol[:-1].t().reshape(kernel.shape[0], len(kept), *kernel.shape[2:])
        write_kernel(nxt, new, bias + sol[-1], i + 1)
    return done


def lasso_masks(model: RepNet, x: torch.Tensor, budget: Budget, step: int = 1,
                tolerance: float = 0.03) -> tuple[Masks, list[torch.Tensor]]:
    """LASSO-scored masks meeting ``budget``; ``model``'s next layers are rewritten to
    reconstruct the dense outputs (its gates are left at the masks)."""
    model.eval()
    scores = lasso_scores(model, x)
    masks = global_masks(model.spec, scores, budget, step=step, tolerance=tolerance)
    reconstruct(model, masks, x)
    return masks, scores


@register_method("lasso")
class Lasso(PruningMethod):
    summary = "LASSO channel selection with least-squares reconstruction (He et al.); needs sample inputs"
    needs_inputs = True

    def select(self, inputs: torch.Tensor | None = None) -> tuple[Masks, list[torch.Tensor]]:
        if inputs is None:
            raise RepasError("method lasso samples feature maps: pass inputs (a batch of training images)")
        return lasso_masks(self.model, inputs, self.budget, self.step, self.tolerance)
