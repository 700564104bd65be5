"""Search spaces: a registry of named supernet specs and ``create_supernet``."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from repas.errors import RepasError
from repas.spec import ArchSpec, LayerSpec

REPVGG_BRANCHES = ["conv", "conv1x1", "identity"]
# ECB (ECBSR): a plain 3x3, 1x1-expand + 3x3-squeeze, and 1x1 + fixed Sobel-x / Sobel-y /
# Laplacian filters; no BN, as in the paper.
ECB_BRANCHES = ["conv_plain", "expand_squeeze", "sobel_x", "sobel_y", "laplacian"]
SpaceFn = Callable[..., ArchSpec]
_SPACES: dict[str, SpaceFn] = {}


def register_space(name: str) -> Callable[[SpaceFn], SpaceFn]:
    """Register a function that returns a supernet spec; it takes keyword overrides
    (in_channels, input_size, num_classes for classifiers; in_channels, input_size, scale
    for super-resolution)."""
    def wrap(fn: SpaceFn) -> SpaceFn:
        _SPACES[name] = fn
        return fn
    return wrap


def list_spaces() -> list[str]:
    return sorted(_SPACES)


def repvgg_stages(name: str, stage_widths: list[int], depths: list[int], in_channels: int,
                  input_size: tuple[int, int], num_classes: int, strides: list[int]) -> ArchSpec:
    """A RepVGG-style spec: stages of blocks, the stride at each stage's first block.

    Blocks that keep shape (stride 1, in == out) get the identity branch, as in RepVGG.
    """
    layers, c_in = [], in_channels
    for width, depth, stride in zip(stage_widths, depths, strides):
        for d in range(depth):
            s = stride if d == 0 else 1
            branches = [b for b in REPVGG_BRANCHES if b != "identity" or (s == 1 and c_in == width)]
            layers.append(LayerSpec(out_channels=width, kernel=3, stride=s, branches=branches))
            c_in = width
    return ArchSpec(name=name, layers=layers, in_channels=in_channels, input_size=input_size,
                    num_classes=num_classes)


@register_space("repvgg-fmnist")
def _fmnist(in_channels: int = 1, input_size: tuple[int, int] = (28, 28), num_classes: int = 10) -> ArchSpec:
    # 16 / 32x2 / 64x3 at 28 / 14 / 7 pixels: 7.3 M dense MACs, about a minute an epoch on 2 cores.
    return repvgg_stages("repvgg-fmnist", [16, 32, 64], [1, 2, 3], in_channels, input_size, num_classes, [1, 2, 2])


@register_space("repvgg-fmnist-wide")
def _fmnist_wide(in_channels: int = 1, input_size: tuple[int, int] = (28, 28), num_classes: int = 10) -> ArchSpec:
    # repvgg-fmnist at 1.5x the widths (24 / 48x2 / 96x3, 16.4 M MACs): a space to search down to
    # the default dense net's cost, the NAS claim (a searched net beats the hand-designed one)
    return repvgg_stages("repvgg-fmnist-wide", [24, 48, 96], [1, 2, 3], in_channels, input_size, num_classes,
                         [1, 2, 2])


def _repvgg_imagenet(name: str, a: float, b: float, depths: list[int], in_channels: int = 3,
                     input_size: tuple[int, int] = (224, 224), num_classes: int = 1000) -> ArchSpec:
    widths = [min(64, int(64 * a)), int(64 * a), int(128 * a), int(256 * a), int(512 * b)]
    return repvgg_stages(name, widths, depths, in_channels, input_size, num_classes, [2, 2, 2, 2, 2])


for _name, _a, _b, _depths in (("repvgg-a0", 0.75, 2.5, [1, 2, 4, 14, 1]), ("repvgg-a1", 1.0, 2.5, [1, 2, 4, 14, 1]),
                               ("repvgg-b0", 1.0, 2.5, [1, 4, 6, 16, 1])):
    register_space(_name)(lambda _n=_name, _a=_a, _b=_b, _d=_depths, **kw: _repvgg_imagenet(_n, _a, _b, _d, **kw))


def ecbsr_spec(name: str, blocks: int, channels: int, scale: int = 2, in_channels: int = 1,
               input_size: tuple[int, int] = (360, 640), branches: list[str] | None = None) -> ArchSpec:
    """ECBSR's shape: head (colours -> C), ``blocks`` body blocks (C -> C), a tail to
    colours * scale^2 (fixed width, no activation), PReLU; gates after head and body.
    ``input_size`` is the LR size the budget is counted at (default 640x360 -> 1280x720)."""
    branches = list(branches or ECB_BRANCHES)
    layers = [LayerSpec(channels, branches=branches) for _ in range(blocks + 1)]
    layers.append(LayerSpec(in_channels * scale * scale, branches=branches, gated=False, act="identity"))
    return ArchSpec(name=name, layers=layers, in_channels=in_channels, input_size=input_size, num_classes=0,
                    task="super-resolution", act="prelu", scale=scale)


for _m, _c in ((4, 16), (4, 32), (10, 32), (16, 64)):
    register_space(f"ecbsr-m{_m}c{_c}")(lambda _m=_m, _c=_c, **kw: ecbsr_spec(f"ecbsr-m{_m}c{_c}", _m, _c, **kw))


def with_branches(spec: ArchSpec, branches: list[str]) -> ArchSpec:
    """The same widths with another block: every layer gets ``branches`` (identity branches
    only where the layer keeps its shape), e.g. DBB's or MobileOne's instead of RepVGG's."""
    d = spec.to_dict()
    for i, lay in enumerate(d["layers"]):
        shape_keeping = lay["stride"] == 1 and (lay["identity_map"] is not None
                                                or spec.in_channels_of(i) == lay["out_channels"])
        lay["branches"] = [b for b in branches if shape_keeping or not b.startswith("identity")]
        if not lay["branches"]:
            raise RepasError(f"layer {i} of {spec.name} would have no branch left from {branches}")
        if not any(b.startswith("identity") for b in lay["branches"]):
            lay["identity_map"] = None
        lay["mid_channels"] = None
    return ArchSpec.from_dict(d)


def create_supernet_spec(name: str, **overrides: object) -> ArchSpec:
    """The spec of a registered search space, e.g. ``create_supernet_spec("ecbsr-m4c32", scale=3)``."""
    if name not in _SPACES:
        near = difflib.get_close_matches(name, _SPACES, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise RepasError(f"unknown search space {name!r}{hint}; known: {', '.join(list_spaces())}")
    try:
        return _SPACES[name](**overrides)
    except TypeError as e:
        raise RepasError(f"search space {name!r} does not take these options {sorted(overrides)}: {e}") from None
