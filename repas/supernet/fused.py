"""Fusing a whole RepNet: every block becomes one conv, and the spec says so."""

from __future__ import annotations

from repas.reparam import fuse
from repas.spec import ArchSpec
from repas.supernet.net import RepNet


def fused_spec(spec: ArchSpec) -> ArchSpec:
    """The deploy-form spec: every layer a single ``fused`` conv with bias."""
    d = spec.to_dict()
    for lay in d["layers"]:
        lay["branches"] = ["fused"]
        lay["identity_map"] = None
    if not d["name"].endswith("-fused"):
        d["name"] += "-fused"
    return ArchSpec.from_dict(d)


def fuse_net(model: RepNet, inplace: bool = False) -> RepNet:
    """The plain conv/act net equal to ``model`` in eval mode, rebuildable from its spec."""
    out = fuse(model, inplace=inplace)
    out.spec = fused_spec(model.spec)
    return out
