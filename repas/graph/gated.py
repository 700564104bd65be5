"""``GatedModel``: any CNN with one ``BinaryGate`` per prunable channel group.

The gates multiply, through forward hooks, the outputs of the layers each group cuts
(``ChannelGroup`` members marked ``masked``): a channel switched off is zero everywhere the
group's channels go, which is what the physically pruned model computes, so extraction
(``extract``) is an equality. The user's model is not copied or changed apart from the
hooks; ``remove()`` takes them away.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from repas.errors import RepasError
from repas.graph.cost import LayerCost, graph_cost, layer_costs
from repas.graph.groups import ChannelGroup, channel_groups, dependency_graph, torch_pruning_guards
from repas.supernet.gate import BinaryGate


@dataclass
class GroupLayer:
    """A channel group seen as a layer of a spec (what the pruning methods read)."""

    name: str
    out_channels: int
    gated: bool = True


@dataclass
class GraphSpec:
    """The spec of a gated user model: one layer per channel group, in the groups' order."""

    name: str
    layers: list[GroupLayer]
    input_shape: tuple[int, ...]
    task: str = "classification"
    extra: dict = field(default_factory=dict)

    @property
    def widths(self) -> list[int]:
        return [lay.out_channels for lay in self.layers]

    @property
    def input_size(self) -> tuple[int, ...]:
        return tuple(self.input_shape[2:])

    @property
    def in_channels(self) -> int:
        return int(self.input_shape[1])


class GatedModel(nn.Module):
    """``model`` with a gate on every prunable channel group (``channel_groups``)."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, *, ignored_layers: Iterable[nn.Module] = (),
                 task: str = "classification", name: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.example_inputs = example_inputs.detach()
        self.ignored = [n for n, m in model.named_modules() if any(m is i for i in ignored_layers)]
        self.groups: list[ChannelGroup] = channel_groups(model, example_inputs, ignored_layers=ignored_layers)[0]
        self.gates = nn.ModuleList(BinaryGate(g.size) for g in self.groups)
        self.costs: list[LayerCost] = layer_costs(model, example_inputs, self.groups)
        self.spec = GraphSpec(name or type(model).__name__, [GroupLayer(g.root, g.size) for g in self.groups],
                              tuple(example_inputs.shape), task)
        self._hooks: list[int] = []  # hook ids (a deep copy's modules carry the same ids, not the handles)
        modules = dict(model.named_modules())
        for gate, group in zip(self.gates, self.groups):
            for member in group.members:
                if member.masked:
                    index = torch.tensor(member.group)  # the gate channel of each member channel
                    layer = modules[member.name]
                    dim = -1 if isinstance(layer, nn.Linear) else 1  # a Linear's features are its last dimension
                    self._hooks.append(layer.register_forward_hook(
                        _Masker(gate, index, torch.tensor(member.channels), dim)).id)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    # ---- what the pruning methods use (as on a RepNet) -------------------------------
    def gate_modules(self) -> list[BinaryGate]:
        return list(self.gates)

    def gate_parameters(self) -> Iterator[nn.Parameter]:
        return (g.weight for g in self.gates)

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()

    def channel_counts(self) -> list[torch.Tensor]:
        """Each group's number of channels on, differentiable through the gates."""
        return [g.count() for g in self.gates]

    @torch.no_grad()
    def filter_norms(self) -> list[torch.Tensor]:
        """Each group channel's L1 norm: the sum over the conv and linear layers whose
        outputs the group cuts of that output filter's weights (Li et al., per group)."""
        modules = dict(self.model.named_modules())
        norms = []
        for group in self.groups:
            total = torch.zeros(group.size)
            for member in group.members:
                m = modules[member.name]
                if member.side == "out" and isinstance(m, nn.Conv2d | nn.Linear):
                    per = m.weight.detach().abs().flatten(1).sum(1).float().cpu()
                    total.index_add_(0, torch.tensor(member.group), per[torch.tensor(member.channels)])
            norms.append(total)
        return norms

    def freeze_gates(self, frozen: bool = True) -> None:
        for g in self.gates:
            g.freeze(frozen)

    def cost(self, metric: str = "macs", widths: list | None = None) -> torch.Tensor:
        """MACs or params at ``widths`` (one per group; default: the gates' differentiable counts)."""
        widths = [g.count() for g in self.gates] if widths is None else widths
        return graph_cost(self.costs, widths, metric)

    def cost_fn(self, metric: str = "macs"):
        """``widths -> cost``, the callable a ``Budget`` takes."""
        return lambda widths: graph_cost(self.costs, widths, metric)

    def remove(self) -> nn.Module:
        """Take the hooks off; returns the user's model as it was."""
        _drop_hooks(self.model, self._hooks)
        self._hooks = []
        return self.model

    # ---- extraction ----------------------------------------------------------------------
    def masks(self) -> list[torch.Tensor]:
        return [g.mask().clone() for g in self.gates]

    @torch.no_grad()
    def extract(self, masks: list[torch.Tensor] | None = None) -> nn.Module:
        """A physically smaller copy of the user's model (the same classes, no hooks), equal
        to the gated model at ``masks`` (default: the gates')."""
        masks = self.masks() if masks is None else masks
        pruned = prune_copy(self.model, self.example_inputs, self.groups, masks, hooks=self._hooks)
        return pruned


class _Masker:
    """The forward hook that multiplies a layer's output channels by its group's gate. An
    object holding the gate, not a closure: a deep copy of the GatedModel (timm's EMA makes
    one) then masks with the copy's own gates."""

    def __init__(self, gate: BinaryGate, group_index: torch.Tensor, channels: torch.Tensor, dim: int = 1) -> None:
        self.gate, self.group_index, self.channels, self.dim = gate, group_index, channels, dim

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        b = self.gate.binary()
        dim = getattr(self, "dim", 1) % output.dim()
        n = output.shape[dim]
        if len(self.channels) == n and bool((self.channels == torch.arange(n)).all()):
            scale = b[self.group_index]
        else:
            scale = torch.ones(n, dtype=b.dtype, device=b.device).index_put((self.channels,), b[self.group_index])
        shape = [1] * output.dim()
        shape[dim] = n
        return output * scale.to(output.dtype).view(shape)


def prune_copy(model: nn.Module, example_inputs: torch.Tensor, groups: list[ChannelGroup],
               masks: list[torch.Tensor], *, hooks: list[int] = ()) -> nn.Module:
    """A deep copy of ``model`` without the forward hooks of ids ``hooks``, each group's switched-off channels cut by
    Torch-Pruning (the root layer's pruner, the whole group with it)."""
    out = copy.deepcopy(model)
    _drop_hooks(out, hooks)
    graph = dependency_graph(out, example_inputs)
    modules = dict(out.named_modules())
    followers = _group_followers(out)
    for group, mask in zip(groups, masks):
        if len(mask) != group.size:
            raise RepasError(f"mask of {len(mask)} channels for group {group.root} of {group.size}")
        off = torch.nonzero(~mask.bool()).flatten().tolist()
        if not off:
            continue
        if len(off) == group.size:
            raise RepasError(f"group {group.root} would lose every channel: keep at least one")
        root = modules[group.root]
        pruner = graph.get_pruner_of_module(root)
        with torch_pruning_guards():
            graph.get_pruning_group(root, pruner.prune_out_channels, idxs=group.root_channels(off)).prune()
    for block, conv in followers:  # blocks that record their conv's groups (timm's RepVGG, MobileOne)
        block.groups = conv.groups
    return out


def _drop_hooks(model: nn.Module, ids) -> None:
    ids = set(ids)
    for m in model.modules():
        for key in [k for k in m._forward_hooks if k in ids]:
            del m._forward_hooks[key]


def _group_followers(model: nn.Module) -> list[tuple[nn.Module, nn.Conv2d]]:
    """Modules that keep a copy of their first conv's ``groups`` (a depthwise block's channel
    count), which Torch-Pruning updates in the conv only: their reparameterisation reads it."""
    pairs = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) or not isinstance(getattr(m, "groups", None), int) or m.groups == 1:
            continue
        conv = next((c for c in m.modules() if isinstance(c, nn.Conv2d)), None)
        if conv is not None and conv.groups == m.groups:
            pairs.append((m, conv))
    return pairs
