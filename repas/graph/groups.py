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

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from repas.errors import RepasError

PARAMETRIC = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d, nn.PReLU)


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
    """Channels kept or removed together: ``size`` channels of the root conv's output."""

    root: str
    size: int
    members: list[Member] = field(default_factory=list)


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
        with torch.enable_grad():  # the trace follows autograd's graph
            return tp.DependencyGraph().build_dependency(model.eval(), example_inputs=example_inputs)
    except Exception as e:  # noqa: BLE001 (any failure of the trace is the user's model not tracing)
        raise RepasError(f"{type(model).__name__} does not trace for its channel dependencies "
                         f"({type(e).__name__}: {e}); a model with data-dependent control flow cannot be searched "
                         "as a whole: pass ignored_layers, or search a traceable part") from None
    finally:
        model.train(was_training)


def channel_groups(model: nn.Module, example_inputs: torch.Tensor, *,
                   ignored_layers: Iterable[nn.Module] = ()) -> tuple[list[ChannelGroup], object]:
    """The prunable channel groups of ``model`` (and the dependency graph they came from).
    ``ignored_layers``: layers whose output channels must stay (a classifier's classes, an
    image output's colours); by default the last conv or linear layer of the trace."""
    graph = dependency_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    ignored = list(ignored_layers) or [_output_layer(model, graph)]
    groups = []
    for tg in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.ConvTranspose2d,
                                                                              nn.Linear]):
        root = tg[0].dep.target.module
        group = ChannelGroup(root=names[root], size=len(tg[0].root_idxs))
        for item in tg:
            module = item.dep.target.module
            if not isinstance(module, nn.Module) or module not in names:
                continue  # an operation (add, concat, reshape): it has no channels of its own to cut
            if not isinstance(module, PARAMETRIC):
                raise RepasError(f"layer {names[module]} ({type(module).__name__}) is coupled to the channels of "
                                 f"{group.root} but repas cannot cut it: add it to ignored_layers with the layers "
                                 "that feed it, or replace it with a standard layer")
            side = "out" if "out_channels" in item.dep.handler.__name__ else "in"
            group.members.append(Member(names[module], side, [int(i) for i in item.idxs],
                                        [int(i) for i in item.root_idxs]))
        _mark_masked(group, graph, names)
        groups.append(group)
    if not groups:
        raise RepasError(f"{type(model).__name__} has no prunable channel group (every conv is ignored or coupled "
                         "to an ignored layer)")
    return groups, graph


def _output_layer(model: nn.Module, graph) -> nn.Module:
    """The last conv or linear layer the trace reaches: the model's output channels."""
    last = None
    for node in graph.module2node.values():
        if isinstance(node.module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and not node.outputs:
            last = node.module
    if last is None:  # the output goes through an op (flatten, pixel shuffle): the last such layer by order
        last = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))][-1]
    return last


def _mark_masked(group: ChannelGroup, graph, names: dict[nn.Module, str]) -> None:
    """Mask each output-cut layer of the group whose output goes on to something other than
    another output-cut layer of the group (a conv followed by its BatchNorm: the BN's output
    is masked, so the BN never normalises a zeroed channel)."""
    cut = {m.name for m in group.members if m.side == "out"}
    modules = {n: m for m, n in names.items()}
    for member in group.members:
        if member.side != "out":
            continue
        node = graph.module2node[modules[member.name]]
        nexts = [names.get(o.module) for o in node.outputs]
        member.masked = not nexts or any(n not in cut for n in nexts)
