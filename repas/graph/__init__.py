"""Width search for any CNN: channel groups from Torch-Pruning's dependency graph, one gate
per group (``GatedModel``), MACs and params as a function of the groups' widths, and
extraction into a smaller model of the user's own classes."""

from repas.graph.gated import GatedModel, GraphSpec, prune_copy
from repas.graph.groups import ChannelGroup, channel_groups

__all__ = ["ChannelGroup", "GatedModel", "GraphSpec", "channel_groups", "prune_copy"]
