"""``create_model``: a network of a registered search space by name, as timm's
``create_model`` builds one of its registered models."""

from __future__ import annotations

from typing import Any

from repas.spec import ArchSpec
from repas.supernet.net import RepNet, build
from repas.supernet.spaces import create_supernet_spec, with_branches


def ungated(spec: ArchSpec) -> ArchSpec:
    """The same net with no gate: a plain multi-branch network of the space's widths."""
    d = spec.to_dict()
    for lay in d["layers"]:
        lay["gated"] = False
    return ArchSpec.from_dict(d)


def create_model(name: str, *, gated: bool = True, branches: list[str] | None = None, **overrides: Any) -> RepNet:
    """A freshly initialised network of search space ``name`` (``repas.list_spaces()``):
    with a BinaryGate after every prunable block (``gated=True``, a supernet to search) or
    without. ``branches`` gives every block another branch set (e.g. DBB's); ``overrides``
    go to the space (``in_channels``, ``input_size``, ``num_classes``; ``scale`` for SR)."""
    spec = create_supernet_spec(name, **overrides)
    if branches is not None:
        spec = with_branches(spec, branches)
    return build(spec if gated else ungated(spec))
