"""Supernets: binary gates, the spec-driven network builder, search spaces, model files."""

from repas.supernet.factory import create_model
from repas.supernet.fused import conv_bn_form, fuse, fuse_repnet, fused_spec
from repas.supernet.gate import BinaryGate
from repas.supernet.gating import apply_masks, gate_masks, gate_scores, gate_widths, gated_copy
from repas.supernet.model_files import load_model, save_model
from repas.supernet.net import RepNet, build
from repas.supernet.spaces import create_supernet_spec, list_spaces, register_space, with_branches
from repas.supernet.timm_weights import from_timm_repvgg

__all__ = ["BinaryGate", "RepNet", "apply_masks", "build", "create_model", "create_supernet_spec", "fuse",
           "conv_bn_form", "fuse_repnet", "fused_spec", "gate_masks", "gate_scores", "gate_widths", "gated_copy",
           "from_timm_repvgg", "list_spaces", "load_model", "register_space", "save_model", "with_branches"]
