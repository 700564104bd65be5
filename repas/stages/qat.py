"""Quantization-aware training of the fused net, for the bundle's int8 .pte (``export.qat``).

Measured (docs/int8_fmnist.md, scripts/bench_int8.py): QAT on the *fused* net, a fraction
of an epoch to one epoch of SGD at lr 1e-3 with cosine decay, observers frozen half way,
brings the int8 .pte level with float, where post-training int8 loses 0.1-0.2 points;
QAT on the multi-branch net (fake-quant on each block's fused kernel) did no better and
trains slower. So QAT runs here, after fusion, where the int8 files are made: the .pte is
the converted QAT graph itself (no fresh calibration), checked against PyTorch's int8
reference. onnxruntime's int8 file is calibrated on the QAT-trained float weights (its
quantizer cannot take PT2E's parameters), so it is close to, not equal to, the trained net.

``MultiBranchQAT`` (``prepare_qat_multibranch``) is the alternative that was measured: QAT
on the multi-branch net with fake-quant on each block's fused kernel (``scripts/bench_int8.py``).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

import torch
from torch import nn

from repas.config import PipelineConfig
from repas.deploy.mixed_precision import layer_filter
from repas.deploy.qat import convert_qat, freeze_observers, prepare_qat
from repas.deploy.xnnpack_rewrites import rewrite_for_xnnpack
from repas.errors import RepasError
from repas.task_data import TaskData

# QAT's learning rate by optimizer, where export.qat_lr is null: SGD's measured on Fashion-MNIST
# (docs/int8_fmnist.md), Adam's on SR x2 (3e-4 lost 0.08 dB after 3 epochs, 1e-4 0.11, 3e-5 more)
QAT_LR = {"sgd": 1e-3, "adam": 3e-4}

log = logging.getLogger("repas.stages")


def qat_int8(cfg: PipelineConfig, fused: nn.Module, data: TaskData, spec: Any) -> tuple[nn.Module, nn.Module,  # noqa: ANN401
                                                                                         dict[str, Any]]:
    """Train ``fused`` (a fused net, eval) with int8 fake-quant for ``export.qat_epochs``;
    returns (the int8 graph for the .pte, the float net with the trained weights, a report)."""
    e, tcfg = cfg.export, cfg.finetune
    loader = data.train_loader(tcfg)
    steps = max(1, math.ceil(e.qat_epochs * len(loader)))
    x0, _ = next(iter(loader))
    fused, _ = rewrite_for_xnnpack(fused, x0[:1])  # what the .pte runs: trained as it will be converted
    keep = e.float_layers or []
    prepared = prepare_qat(fused, x0[:2], node_filter=layer_filter(keep, inside=False) if keep else None,
                           free_size=spec.task != "classification")  # trained on patches, shipped whole
    task = data.task(tcfg, spec)
    params = [p for p in prepared.parameters() if p.requires_grad]
    adam = tcfg.opt.lower().startswith("adam")  # the fine-tune's optimizer family (an Adam-trained SR net)
    lr = e.qat_lr if e.qat_lr is not None else QAT_LR["adam" if adam else "sgd"]
    opt = torch.optim.Adam(params, lr=lr) if adam else torch.optim.SGD(params, lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    prepared.train()
    started, step, epoch, loss = time.perf_counter(), 0, 0, torch.tensor(float("nan"))
    while step < steps:
        loader.set_epoch(epoch)
        for x, y in loader:
            if step == max(1, steps // 2):  # (not at step 0: a frozen observer that saw nothing has no range)
                freeze_observers(prepared)  # the ranges settle; the weights train on under them
            loss = task.loss(prepared(x), y)
            if not torch.isfinite(loss):
                raise RepasError(f"export qat: the loss became {float(loss)} at step {step}; lower export.qat_lr "
                                 f"(now {lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 100 == 0 or step == steps:
                log.info(f"export qat: step {step}/{steps}, loss {loss.item():.4f} "
                         f"({time.perf_counter() - started:.0f} s)")
            if step >= steps:
                break
        epoch += 1
    prepared.eval()
    int8 = convert_qat(prepared)
    trained = copy.deepcopy(fused)
    weights = {k: v for k, v in prepared.state_dict().items() if k in trained.state_dict()}
    trained.load_state_dict(weights, strict=False)
    missing = set(trained.state_dict()) - set(weights)
    if missing:
        raise RepasError(f"export qat: the QAT graph lost parameters {sorted(missing)[:3]}: please report")
    report = {"epochs": e.qat_epochs, "steps": steps, "lr": lr, "optimizer": "adam" if adam else "sgd",
              "seconds": time.perf_counter() - started,
              "final_loss": loss.item(), "observers_frozen_at_step": steps // 2}
    log.info(f"export qat: {steps} steps in {report['seconds']:.0f} s")
    return int8, trained.eval(), report


class MultiBranchQAT(nn.Module):
    """A multi-branch RepNet trained through its fused net's fake-quant graph.

    Each forward computes every block's fused kernel and bias from its branches
    (``RepBlock.equivalent_kernel_bias``, differentiable; BatchNorm at its running
    statistics, which stay fixed while gamma and beta train), folds the gates in as
    ``repas.fuse`` does, and runs ``graph`` (``prepare_qat`` of the fused net) with them:
    weight fake-quant acts on the fused weight, so the int8 net is exactly the one trained.
    The parameters that train are the branches' (``net``); ``graph`` only holds the
    fake-quant state. ``convert_qat`` accepts it."""

    def __init__(self, net: nn.Module, graph: torch.fx.GraphModule) -> None:
        super().__init__()
        self.net = net.eval()  # BN at running statistics; its modules are never called here
        self.graph = graph
        own = dict(graph.named_parameters())
        self._shared = [n for n, _ in net.named_parameters() if n in own]  # head, PReLU: same names
        for p in graph.parameters():
            p.requires_grad_(False)  # overridden every forward

    def fused_tensors(self) -> dict[str, torch.Tensor]:
        """The fused net's parameters as functions of the branches' (with gradients)."""
        from repas.supernet import BinaryGate

        params = dict(self.net.named_parameters())
        out = {n: params[n] for n in self._shared}
        for i, block in enumerate(self.net.blocks):
            kernel, bias = block.equivalent_kernel_bias()
            gate = self.net.gates[i]
            if isinstance(gate, BinaryGate):
                mask = gate.mask().to(kernel.dtype)
                kernel, bias = kernel * mask.view(-1, 1, 1, 1), bias * mask
            out[f"blocks.{i}.reparam_conv.weight"] = kernel
            out[f"blocks.{i}.reparam_conv.bias"] = bias
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.graph, self.fused_tensors(), (x,), strict=False)

    def train(self, mode: bool = True) -> MultiBranchQAT:
        self.training = mode
        self.graph.train(mode)
        self.net.eval()
        return self

    @torch.no_grad()
    def fused_graph(self) -> torch.fx.GraphModule:
        """A copy of ``graph`` holding the current fused weights as its own parameters."""
        graph = copy.deepcopy(self.graph)
        own = dict(graph.named_parameters())
        for name, value in self.fused_tensors().items():
            own[name].copy_(value)
        return graph

    def fused_net(self) -> nn.Module:
        """The float fused net (``repas.fuse``) of the trained branches."""
        from repas.supernet import fuse

        return fuse(self.net)


def prepare_qat_multibranch(net: nn.Module, example: torch.Tensor) -> MultiBranchQAT:
    """QAT on a multi-branch RepNet (unfused): see ``MultiBranchQAT``."""
    from repas.supernet import RepNet, fuse

    if not isinstance(net, RepNet):
        raise RepasError(f"multi-branch QAT needs a repas RepNet, got {type(net).__name__}; fuse the model and "
                         "use prepare_qat")
    if any(b.fused for b in net.blocks):
        raise RepasError("multi-branch QAT needs the unfused net: its blocks are already fused (use prepare_qat)")
    net = copy.deepcopy(net).eval()
    return MultiBranchQAT(net, prepare_qat(fuse(net), example))
