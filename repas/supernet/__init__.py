"""Supernets: binary gates, the spec-driven network builder, search spaces, model files."""

from repas.supernet.fused import fuse_net, fused_spec
from repas.supernet.gate import BinaryGate
from repas.supernet.model_files import load_model, save_model
from repas.supernet.net import RepNet, build
from repas.supernet.spaces import create_supernet_spec, list_spaces, register_space, with_branches

__all__ = ["BinaryGate", "RepNet", "build", "create_supernet_spec", "fuse_net", "fused_spec", "list_spaces",
           "load_model", "register_space", "save_model", "with_branches"]
