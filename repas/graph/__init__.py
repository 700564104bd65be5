"""Width search for any CNN: channel groups from Torch-Pruning's dependency graph, one gate
per group (``GatedModel``), MACs and params as a function of the groups' widths, and
extraction into a smaller model of the user's own classes."""

from repas.graph.files import load_pruned, save_pruned
from repas.graph.fuse import fuse_user_model
from repas.graph.gated import GatedModel, GraphSpec, prune_copy
from repas.graph.groups import ChannelGroup, channel_groups

__all__ = ["ChannelGroup", "GatedModel", "GraphSpec", "channel_groups", "fuse_user_model", "load_pruned", "prune_copy",
           "save_pruned"]
