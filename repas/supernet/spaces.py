"""Search spaces: a registry of named supernet specs and ``create_supernet``."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from repas.errors import RepasError
from repas.spec import ArchSpec, LayerSpec

REPVGG_BRANCHES = ["conv", "conv1x1", "identity"]
_SPACES: dict[str, Callable[[], ArchSpec]] = {}


def register_space(name: str) -> Callable[[Callable[[], ArchSpec]], Callable[[], ArchSpec]]:
    def wrap(fn: Callable[[], ArchSpec]) -> Callable[[], ArchSpec]:
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
def _fmnist() -> ArchSpec:
    # 16 / 32x2 / 64x3 at 28 / 14 / 7 pixels: 7.3 M dense MACs, a few minutes an epoch on 2 cores.
    return repvgg_stages("repvgg-fmnist", [16, 32, 64], [1, 2, 3], 1, (28, 28), 10, [1, 2, 2])


def _repvgg_imagenet(name: str, a: float, b: float, depths: list[int]) -> ArchSpec:
    widths = [min(64, int(64 * a)), int(64 * a), int(128 * a), int(256 * a), int(512 * b)]
    return repvgg_stages(name, widths, depths, 3, (224, 224), 1000, [2, 2, 2, 2, 2])


@register_space("repvgg-a0")
def _a0() -> ArchSpec:
    return _repvgg_imagenet("repvgg-a0", 0.75, 2.5, [1, 2, 4, 14, 1])


@register_space("repvgg-a1")
def _a1() -> ArchSpec:
    return _repvgg_imagenet("repvgg-a1", 1.0, 2.5, [1, 2, 4, 14, 1])


@register_space("repvgg-b0")
def _b0() -> ArchSpec:
    return _repvgg_imagenet("repvgg-b0", 1.0, 2.5, [1, 4, 6, 16, 1])


def create_supernet_spec(name: str, **overrides: object) -> ArchSpec:
    """The spec of a registered search space; ``overrides`` replace top-level spec fields."""
    if name not in _SPACES:
        near = difflib.get_close_matches(name, _SPACES, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise RepasError(f"unknown search space {name!r}{hint}; known: {', '.join(list_spaces())}")
    spec = _SPACES[name]()
    if overrides:
        d = spec.to_dict()
        d.update(overrides)
        spec = ArchSpec.from_dict(d)
    return spec
