"""The prunable channel groups of any CNN, found by Torch-Pruning's ``DependencyGraph``.

Channels that a residual add, a concatenation, a depthwise conv or a BatchNorm couple must
be kept or removed together: Torch-Pruning traces the model once on example inputs and
groups every layer whose channels move with a root conv's output channels (the layers
whose outputs are cut, and those whose inputs are). One ``ChannelGroup`` per group records,
by module name, which channels of which layer each of the group's channels is, so that a
gate of the group's size can mask them all and extraction can cut them all.

Torch-Pruning rather than ``torch.fx``: it already follows adds, concatenations, splits,
reshapes, depthwise and grouped convs, transposed convs and the timm and torchvision block
types, is maintained against new torch releases, and prunes physically with the same
groups, so the gated model and the extracted one come from one analysis.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from repas.errors import RepasError

PARAMETRIC = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d, nn.PReLU)
log = logging.getLogger("repas.graph")


@dataclass
class Member:
    """One layer a group touches: its name, whether the group cuts its outputs ("out") or
    its inputs ("in"), and which of its channels each of the group's channels is."""

    name: str
    side: str
    channels: list[int]          # member channel of each group channel listed in ``group``
    group: list[int]             # the group channels (root indices) those are
    masked: bool = False         # the gate multiplies this layer's output


@dataclass
class ChannelGroup:
    """Channels kept or removed together: ``size`` gate channels over the root conv's
    outputs. Each gate channel is one root channel, except where a grouped conv ties
    channels: then ``slots`` gives the gate channel of each root channel (the channels at
    one position of every conv group share a gate, so that each group shrinks evenly)."""

    root: str
    size: int
    members: list[Member] = field(default_factory=list)
    slots: list[int] | None = None

    def root_channels(self, gate_channels: Iterable[int]) -> list[int]:
        """The root conv's output channels that ``gate_channels`` stand for."""
        wanted = set(int(i) for i in gate_channels)
        if self.slots is None:
            return sorted(wanted)
        return [r for r, s in enumerate(self.slots) if s in wanted]


def _require_torch_pruning():
    try:
        import torch_pruning as tp
    except ImportError:
        raise RepasError("searching the widths of your own model needs Torch-Pruning: pip install 'repas[baselines]' "
                         "(or pip install torch-pruning)") from None
    return tp


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor):
    """Torch-Pruning's graph of ``model`` traced on ``example_inputs`` (a clear error where it cannot)."""
    tp = _require_torch_pruning()
    was_training = model.training
    try:
        with torch.enable_grad(), torch_pruning_guards(), warnings.catch_warnings():  # autograd's graph is traced
            # parameters used outside a layer (a class token, a layer scale) are in the groups as they should be
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            return tp.DependencyGraph().build_dependency(model.eval(), example_inputs=example_inputs)
    except Exception as e:  # noqa: BLE001 (any failure of the trace is the user's model not tracing)
        raise RepasError(f"{type(model).__name__} does not trace for its channel dependencies "
                         f"({type(e).__name__}: {e}); a model with data-dependent control flow cannot be searched "
                         "as a whole: pass ignored_layers, or search a traceable part") from None
    finally:
        model.train(was_training)


@contextmanager
def torch_pruning_guards() -> Iterator[None]:
    """Two repairs to Torch-Pruning, for the calls made inside (tracing, ``get_pruning_group``).

    - A reshape that moves channels into another dimension (the channel shuffle of
      ShuffleNet: view to 5-D, transpose, view back) has no channel-to-channel map that
      Torch-Pruning knows; it divides by zero on some and maps others as the identity,
      which is wrong. Such a reshape is recorded as opaque (``graph.repas_opaque``)
      instead, and the channel groups that pass through it stay whole.
    - Where two channels of a group reach one channel of a layer by two paths (GhostNet:
      ``cat([x1, depthwise(x1)])``), Torch-Pruning keeps one of the two and forgets the
      other; the pair is recorded (``group.repas_ties``), so that both share a gate."""
    from torch_pruning.dependency import index_mapping
    from torch_pruning.dependency.group import Group

    original_reshape, original_merge = index_mapping.update_reshape_index_mapping, Group.add_and_merge

    def reshape(graph, node) -> None:
        opaque = graph.__dict__.setdefault("repas_opaque", set())
        if _regroups(node):
            opaque.add(node)
            return
        deps = list(node.dependencies) + [d for n in node.inputs + node.outputs for d in n.dependencies
                                          if d.target is node]
        saved = [list(d.index_mapping) for d in deps]
        try:
            original_reshape(graph, node)
        except ZeroDivisionError:  # a view whose channel counts Torch-Pruning cannot infer
            opaque.add(node)
            return
        if [list(d.index_mapping) for d in deps] != saved and not _feeds_linear(node):
            # a flatten mapping (one channel to many) anywhere but before a classifier: attention
            # maps, position biases; followed through the graph it grows without bound
            for d, m in zip(deps, saved):
                d.index_mapping[:] = m
            opaque.add(node)

    def merge(group, dep, idxs) -> None:
        ties = group.__dict__.setdefault("repas_ties", [])
        before = next((i for d, i in group.items if d.target == dep.target and d.handler == dep.handler), [])
        first: dict[int, int] = {}
        for index in list(before) + list(idxs):
            if first.setdefault(index.idx, index.root_idx) != index.root_idx:
                ties.append((first[index.idx], index.root_idx))
        original_merge(group, dep, idxs)

    index_mapping.update_reshape_index_mapping, Group.add_and_merge = reshape, merge
    try:
        yield
    finally:
        index_mapping.update_reshape_index_mapping, Group.add_and_merge = original_reshape, original_merge


def _feeds_linear(node, depth: int = 4) -> bool:
    """Whether a reshape's output reaches an ``nn.Linear`` through parameter-free ops (a
    flatten before a classifier)."""
    frontier = list(node.outputs)
    for _ in range(depth):
        following = []
        for n in frontier:
            if isinstance(n.module, nn.Linear):
                return True
            if not isinstance(n.module, PARAMETRIC):
                following.extend(n.outputs)
        frontier = following
    return False


def _regroups(node, depth: int = 4) -> bool:
    """Whether a reshape goes into or out of more than 4 dimensions (a channel shuffle's
    views, a qkv projection split into heads): its channels are then regrouped, not kept in
    order. The output's rank shows in the next reshape or permute (within ``depth`` ops)."""
    def rank(n) -> int:
        fn = n.grad_fn
        for attr in ("_saved_self_sizes", "_saved_self_sym_sizes", "_saved_dims"):
            value = getattr(fn, attr, None)
            if isinstance(value, tuple | list):
                return len(value)
        return 0

    if rank(node) > 4:
        return True
    frontier = list(node.outputs)
    for _ in range(depth):
        following = []
        for n in frontier:
            if rank(n) > 4:
                return True
            if not isinstance(n.module, PARAMETRIC):
                following.extend(n.outputs)
        frontier = following
    return False


def channel_groups(model: nn.Module, example_inputs: torch.Tensor, *,
                   ignored_layers: Iterable[nn.Module] = ()) -> tuple[list[ChannelGroup], object]:
    """The prunable channel groups of ``model`` (and the dependency graph they came from).
    ``ignored_layers``: layers whose output channels must stay (a classifier's classes, an
    image output's colours); by default the last conv or linear layer of the trace."""
    graph = dependency_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    ignored = list(ignored_layers) or [_output_layer(model, graph)]
    groups, whole = [], []
    modules = {n: m for m, n in names.items()}
    opaque = graph.__dict__.get("repas_opaque", set())
    for root, tg in _all_groups(graph, ignored):
        if isinstance(tg, str):
            whole.append((names[root], tg))
            continue
        group = ChannelGroup(root=names[root], size=len(tg[0].root_idxs))
        blocked = None
        for item in tg:
            if item.dep.target in opaque or item.dep.source in opaque:
                blocked = blocked or "its channels pass through a reshape that regroups them (a channel shuffle)"
                continue
            module = item.dep.target.module
            if _cuts_channels(item.dep.target):
                blocked = blocked or ("its channels pass through a slice or split of fixed sizes (x[:, a:b], "
                                      "torch.split), which a narrower tensor would shift")
                continue
            if not isinstance(module, nn.Module) or module not in names:
                continue  # an operation (add, concat, reshape): it has no channels of its own to cut
            if not isinstance(module, PARAMETRIC):
                blocked = blocked or (f"layer {names[module]} ({type(module).__name__}) is coupled to the channels of "
                                      f"{group.root} but repas cannot cut it")
                continue
            side = "out" if "out_channels" in item.dep.handler.__name__ else "in"
            group.members.append(Member(names[module], side, [int(i) for i in item.idxs],
                                        [int(i) for i in item.root_idxs]))
        blocked = blocked or _tie(group, modules, tg.__dict__.get("repas_ties", []))
        if blocked:
            whole.append((group.root, blocked))
            continue
        _mark_masked(group, graph, names)
        groups.append(group)
    if whole:
        log.info(f"{type(model).__name__}: {len(whole)} of {len(whole) + len(groups)} channel groups stay whole, "
                 f"e.g. {whole[0][0]}: {whole[0][1]}")
    if not groups:
        why = f": {whole[0][1]}" if whole else ""
        raise RepasError(f"{type(model).__name__} has no prunable channel group{why}; every conv is in "
                         "ignored_layers or coupled to a layer repas cannot cut: replace such layers with standard "
                         "ones (Conv2d, Linear, BatchNorm2d, PReLU), or search a part of the model")
    return groups, graph


def _cuts_channels(node) -> bool:
    """Whether ``node`` is a slice or split of the channel dimension into parts of fixed
    sizes (GhostNet's ``out[:, :oup]``, MixNet's ``torch.split(x, [8, 8], 1)``): the sizes
    are numbers in the model's code, so after a cut it would take other channels than the
    gated model does (or fail)."""
    kind = type(node.module).__name__
    if kind not in ("_SliceOp", "_SplitOp", "_UnbindOp"):
        return False
    grad_fn = node.grad_fn
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None) or getattr(grad_fn, "_saved_self_sizes", None)
    if not sizes:
        return True
    dim = getattr(grad_fn, "_saved_dim", 1)
    dim = dim % len(sizes) if isinstance(dim, int) and abs(dim) < 64 else 1
    if dim != (1 if len(sizes) in (2, 4) else len(sizes) - 1):  # channels: NC, NCHW, or last (tokens)
        return False  # a slice in space or time
    if kind != "_SliceOp":
        return True
    op, size = node.module, int(sizes[dim])
    start, end, step = int(op.start or 0), op.end, int(op.step or 1)
    end = size if end is None else min(int(end), size)
    return start % size != 0 or end < size or step != 1


def _all_groups(graph, ignored: list[nn.Module]) -> Iterator[tuple[nn.Module, object]]:
    """Torch-Pruning's ``get_all_groups`` (each conv or linear layer not yet reached is the
    root of a group of its output channels), except that a root whose channels Torch-Pruning
    cannot follow yields, instead of its group, the reason (its group stays whole)."""
    ignored = list(ignored) + list(graph.IGNORED_LAYERS_IN_TRACING)
    ignored_ids = {id(m) for m in ignored}
    visited: set[int] = set()
    for m in list(graph.module2node):
        if id(m) in ignored_ids or id(m) in visited or not isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            continue
        pruner = graph.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        try:
            with torch_pruning_guards():
                group = graph.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        except Exception as e:  # noqa: BLE001 (Torch-Pruning's index mapping fails on some graphs)
            yield m, f"Torch-Pruning cannot follow its channels ({type(e).__name__})"
            continue
        prunable = True
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                visited.add(id(dep.target.module))
                prunable = prunable and id(dep.target.module) not in ignored_ids
        if prunable:
            yield m, group


def _is_grouped(m: nn.Module) -> bool:
    """A conv with groups that is not depthwise (Torch-Pruning's depthwise: groups == out_channels)."""
    return isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.groups > 1 and m.groups != m.out_channels


def _tie(group: ChannelGroup, modules: dict[str, nn.Module], ties: list[tuple[int, int]]) -> str | None:
    """Tie the group's channels that must be kept or cut together, and make the gate
    channels the tied sets (``group.slots``):

    - the pairs in ``ties`` (two channels of the group that are one channel of some layer);
    - the channels of each grouped conv at one position in every one of its conv groups
      (Torch-Pruning's even shrinking: the conv keeps its ``groups``, each narrower).

    Returns why the group must stay whole, or None."""
    parent = list(range(group.size))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in ties:
        parent[find(a)] = find(b)
    for mb in group.members:
        conv = modules[mb.name]
        if not _is_grouped(conv):
            continue
        if isinstance(conv, nn.ConvTranspose2d):
            return f"layer {mb.name} is a grouped ConvTranspose2d, which repas cannot cut"
        total = conv.out_channels if mb.side == "out" else conv.in_channels
        if sorted(mb.channels) != list(range(total)):
            return (f"grouped conv {mb.name} ({conv.groups} groups) takes only part of its channels from this group, "
                    "so its groups cannot shrink evenly")
        per = total // conv.groups
        first: dict[int, int] = {}
        for c, r in zip(mb.channels, mb.group):
            parent[find(r)] = find(first.setdefault(c % per, r))
    roots: dict[int, int] = {}
    slots = [roots.setdefault(find(r), len(roots)) for r in range(group.size)]
    if len(roots) == group.size:
        return None
    counts = [slots.count(s) for s in range(len(roots))]
    if len(set(counts)) != 1:
        return "its grouped convs or shared channels tie its channels into sets of different sizes"
    group.size, group.slots = len(roots), slots
    for mb in group.members:
        mb.group = [slots[r] for r in mb.group]
    return None


def _output_layer(model: nn.Module, graph) -> nn.Module:
    """The last conv or linear layer the trace reaches: the model's output channels."""
    last = None
    for node in graph.module2node.values():
        if isinstance(node.module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and not node.outputs:
            last = node.module
    if last is None:  # the output goes through an op (flatten, pixel shuffle): the last such layer by order
        last = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))][-1]
    return last


def _carries(m: nn.Module) -> bool:
    """Whether output channel i of ``m`` is its input channel i, transformed."""
    if isinstance(m, nn.BatchNorm2d | nn.PReLU):
        return True
    return isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.groups == m.in_channels == m.out_channels


def _mark_masked(group: ChannelGroup, graph, names: dict[nn.Module, str]) -> None:
    """Mask each output-cut layer of the group whose output goes on to something other than
    another output-cut layer of the group (a conv followed by its BatchNorm: the BN's output
    is masked, so the BN never normalises a zeroed channel). Only a layer that carries each
    channel on as itself (BatchNorm, PReLU, a depthwise conv) continues a channel: a conv that
    reads the channels as inputs needs them masked, even where its own outputs are cut by
    the same group (a residual block whose output joins its input's channels)."""
    modules = {n: m for m, n in names.items()}
    cut = {m.name for m in group.members if m.side == "out" and _carries(modules[m.name])}
    for member in group.members:
        if member.side != "out":
            continue
        node = graph.module2node[modules[member.name]]
        nexts = [names.get(o.module) for o in node.outputs]
        member.masked = not nexts or any(n not in cut for n in nexts)
