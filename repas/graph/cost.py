"""MACs and parameters of a gated user model as a function of its groups' widths.

Each conv or linear layer costs ``k * spatial * c_in * c_out / groups`` MACs; each of its
channel counts is fixed or follows the groups that cut it (a concatenation's consumer
takes input channels from several groups, a depthwise conv's input and output follow one).
Given the groups' gate counts (differentiable) the total is differentiable too; given
integer widths it equals ``torch.utils.flop_counter`` (FLOPs / 2) on the extracted model.
BatchNorm counts 2 parameters a channel; PReLU one. Layers whose channels no group cuts
and whose weights are not a conv's or a linear layer's (``nn.MultiheadAttention``: its
projections and the attention products; LayerNorm, GroupNorm) cost a fixed amount, and so
does whatever else torch's flop counter finds in the traced forward pass (a layer called
through its weights, as torchvision's Swin does, or attention products written as matmuls).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from repas.errors import RepasError
from repas.graph.groups import ChannelGroup
from repas.latency_table import DEPTHWISE, Key, conv_key, head_key


@dataclass
class Channels:
    """A channel count: ``fixed`` plus, for each (group, n, size), the kept share of the
    ``n`` of the group's ``size`` channels this layer carries (all of them, n = size, but
    where a split hands a layer part of a group: then the share is proportional)."""

    fixed: int = 0
    parts: list[tuple[int, int, int]] = field(default_factory=list)

    def count(self, widths: list):
        total = self.fixed
        for g, n, size in self.parts:
            total = total + (widths[g] if n == size else widths[g] * (n / size))
        return total


@dataclass
class LayerCost:
    name: str
    kind: str            # conv | depthwise | linear | bn | prelu | fixed (MACs per_channel, params params_per)
    per_channel: float   # MACs per (c_in x c_out) unit (conv, linear), or per channel (depthwise)
    c_in: Channels
    c_out: Channels
    params_per: float    # parameters per (c_in x c_out) unit or per channel
    bias: bool = False
    key: Key | None = None  # its latency table row (repas.latency_table), where a table can time it
    out_size: tuple[int, int] = (0, 0)  # height and width of its output (conv layers)


def layer_costs(model: nn.Module, example_inputs: torch.Tensor, groups: list[ChannelGroup]) -> list[LayerCost]:
    """The cost entry of every conv, linear, BatchNorm and PReLU layer of ``model``."""
    shapes: dict[str, tuple[int, ...]] = {}
    in_shapes: dict[str, tuple[int, ...]] = {}
    hooks = [m.register_forward_hook(_record(shapes, n, in_shapes)) for n, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    hooks += [m.register_forward_hook(_record_attention(shapes, n), with_kwargs=True) for n, m in model.named_modules()
              if isinstance(m, nn.MultiheadAttention)]
    was = model.training
    try:
        with torch.no_grad(), _plain_attention(), FlopCounterMode(display=False) as counter:
            model.eval()(example_inputs)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    batch = example_inputs.shape[0]
    out_of: dict[str, Channels] = {}
    in_of: dict[str, Channels] = {}
    for gi, group in enumerate(groups):
        for m in group.members:
            target = out_of if m.side == "out" else in_of
            target.setdefault(m.name, Channels()).parts.append((gi, len(m.group), group.size))
    entries = []
    for name, m in model.named_modules():
        c_out = _channels(out_of.get(name), _width(m, "out"))
        c_in = _channels(in_of.get(name), _width(m, "in"))
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            if name not in shapes:
                continue  # not on the traced path: costs nothing
            k = m.weight.shape[2] * m.weight.shape[3]
            spatial = _spatial(shapes[name], m, name) / batch
            key, size = _conv_key(m, in_shapes[name]), tuple(shapes[name][2:4])
            if m.groups == 1:
                entries.append(LayerCost(name, "conv", k * spatial, c_in, c_out, k, m.bias is not None, key, size))
            elif m.groups == m.in_channels == m.out_channels:
                entries.append(LayerCost(name, "depthwise", k * spatial, c_out, c_out, k, m.bias is not None, key,
                                         size))
            else:  # grouped: its groups stay, each shrinks evenly (repas.graph.groups ties the channels)
                entries.append(LayerCost(name, "conv", k * spatial / m.groups, c_in, c_out, k / m.groups,
                                         m.bias is not None, None, size))
        elif isinstance(m, nn.Linear):
            if name not in shapes:
                continue
            tokens = torch.Size(shapes[name][:-1]).numel() / batch
            # a classifier's linear layer on pooled features: the table's head row at 1x1
            key = head_key(1, 1) if len(in_shapes[name]) == 2 else None
            entries.append(LayerCost(name, "linear", tokens, c_in, c_out, 1.0, m.bias is not None, key))
        elif isinstance(m, nn.MultiheadAttention):
            if name in shapes:
                entries.append(LayerCost(name, "fixed", _attention_macs(m, *shapes[name]) / batch, Channels(),
                                         Channels(), float(sum(p.numel() for p in m.parameters()))))
        elif isinstance(m, nn.LayerNorm | nn.GroupNorm):
            entries.append(LayerCost(name, "fixed", 0.0, Channels(), Channels(),
                                     float(sum(p.numel() for p in m.parameters(recurse=False)))))
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            entries.append(LayerCost(name, "bn", 0.0, c_out, c_out, 2.0))
        elif isinstance(m, nn.PReLU):
            entries.append(LayerCost(name, "prelu", 0.0, c_out, c_out, 1.0 if m.num_parameters > 1 else 0.0))
    # what the layers above do not account for (a conv or linear layer called through its
    # weights, attention products outside nn.MultiheadAttention): torch's count, fixed
    rest = counter.get_total_flops() / 2 / batch - float(graph_cost(entries, [g.size for g in groups], "macs"))
    if rest >= 1:  # whole MACs: below that it is rounding
        entries.append(LayerCost("(operations outside layers)", "fixed", rest, Channels(), Channels(), 0.0))
    return entries


def counted_macs(model: nn.Module, *inputs: torch.Tensor) -> float:
    """The MACs torch's flop counter finds in one forward pass of ``model`` (its FLOPs / 2),
    attention counted by its plain matmuls."""
    with torch.no_grad(), _plain_attention(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops() / 2


@contextmanager
def _plain_attention() -> Iterator[None]:
    """Attention as plain matmuls, which torch's flop counter sees (not the fused CPU kernels)."""
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def _record(shapes: dict, name: str, in_shapes: dict):
    def hook(module, inputs, output):
        shapes[name] = tuple(output.shape)
        in_shapes[name] = tuple(inputs[0].shape)
    return hook


def _conv_key(m: nn.Conv2d, in_shape: tuple[int, ...]) -> Key | None:
    """The latency table key of a conv layer: a square kernel with the table's padding
    (``dilation * (kernel // 2)``, "same" at stride 1), one stride and one dilation, dense or
    depthwise. Other convs (grouped, 1x7, unpadded 3x3) have no rows: the table's overhead,
    measured on the whole net, carries them at their dense cost."""
    (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
    pad = (dh * (kh // 2),) * 2 if m.padding == "same" else m.padding
    if isinstance(m, nn.ConvTranspose2d) or kh != kw or sh != sw or dh != dw or pad != (dh * (kh // 2),) * 2:
        return None
    if m.groups == 1:
        groups = 1
    elif m.groups == m.in_channels == m.out_channels:
        groups = DEPTHWISE
    else:
        return None
    return conv_key(kh, sh, int(in_shape[2]), int(in_shape[3]), groups, dh, "identity")


def _record_attention(shapes: dict, name: str):
    def hook(module, args, kwargs, output):
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs.get("key", query)
        shapes[name] = (tuple(query.shape), tuple(key.shape))
    return hook


def _attention_macs(m: nn.MultiheadAttention, query: tuple[int, ...], key: tuple[int, ...]) -> float:
    """MACs of one call (the whole batch): q, k, v and output projections, q k^T and attention x v."""
    batched = len(query) == 3
    if batched and not m.batch_first:
        query, key = (query[1], query[0], query[2]), (key[1], key[0], key[2])
    n = query[0] if batched else 1
    q_len, k_len = (query[1], key[1]) if batched else (query[0], key[0])
    e = m.embed_dim
    projections = q_len * e * e + k_len * m.kdim * e + k_len * m.vdim * e + q_len * e * e
    return float(n * (projections + 2 * q_len * k_len * e))


def _spatial(shape: tuple[int, ...], m: nn.Module, name: str) -> float:
    if isinstance(m, nn.ConvTranspose2d):  # MACs follow the input positions: each scatters a kernel
        raise RepasError(f"layer {name} is a ConvTranspose2d, which repas cannot cost yet: use nn.Upsample + "
                         "nn.Conv2d in its place")
    return float(shape[0] * shape[2] * shape[3])


def _width(m: nn.Module, side: str) -> int:
    if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
        return m.out_channels if side == "out" else m.in_channels
    if isinstance(m, nn.Linear):
        return m.out_features if side == "out" else m.in_features
    if isinstance(m, nn.BatchNorm2d):
        return m.num_features
    if isinstance(m, nn.PReLU):
        return m.num_parameters
    return 0


def _channels(cut: Channels | None, full: int) -> Channels:
    """The layer's channel count: the groups that cut it, the rest fixed."""
    if cut is None:
        return Channels(full)
    return Channels(full - sum(n for _, n, _ in cut.parts), list(cut.parts))


def graph_cost(entries: list[LayerCost], widths: list, metric: str):
    """Total MACs or params at ``widths`` (ints or differentiable counts, one per group)."""
    if metric not in ("macs", "params"):
        raise RepasError(f"a user model is costed in macs or params, not {metric!r} (latency tables: repas profile)")
    total = torch.zeros((), dtype=torch.float64)  # float32 drops units above 16.7M
    for e in entries:
        cin, cout = e.c_in.count(widths), e.c_out.count(widths)
        if metric == "macs":
            if e.kind in ("conv", "linear"):
                total = total + e.per_channel * cin * cout
            elif e.kind == "depthwise":
                total = total + e.per_channel * cout
            elif e.kind == "fixed":
                total = total + e.per_channel
        else:
            if e.kind in ("conv", "linear"):
                total = total + e.params_per * cin * cout + (cout if e.bias else 0)
            elif e.kind == "depthwise":
                total = total + e.params_per * cout + (cout if e.bias else 0)
            elif e.kind == "fixed":
                total = total + e.params_per
            else:
                total = total + e.params_per * cout
    return total
