"""ArchSpec: the JSON-serialisable description of every network repas builds.

The same type describes a supernet (maximum widths, gated layers), an extracted
subnet (searched widths, identity index maps) and a fused plain net (branches
``["fused"]``). A saved model is ``spec.json`` + ``weights.safetensors``; ``build(spec)``
rebuilds it, so nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repas.errors import RepasError
from repas.json_files import MAX_CHANNELS, MAX_KERNEL, MAX_LAYERS, MAX_SIDE, check_int, read_json

SPEC_VERSION = 1

# Branch names a layer may list; "fused" is the deploy form: one plain conv with bias.
# conv: the layer's k x k conv+BN; convAxB: an A x B conv+BN (conv1x1, conv3x3, and ACNet's
# conv1xk / convkx1 with a literal k), each with a _plain suffix for a conv with bias and no
# BN; identity(_plain): the input with(out) BN;
# conv1x1_kxk, conv1x1_avg: DBB; sobel_x, sobel_y, laplacian, expand_squeeze: ECB;
# conv_xN: N parallel k x k conv+BN (MobileOne-style). post_bn is not a branch: a BatchNorm
# after the sum (QARepVGG's block is [conv, conv1x1_plain, identity_plain, post_bn]).
BRANCH_HELP = ("conv, conv1x1, conv3x3, conv1xk, convkx1 (each also as *_plain: bias, no BN), identity, "
               "identity_plain, conv1x1_kxk, "
               "conv1x1_avg, sobel_x, sobel_y, laplacian, expand_squeeze, conv_xN, fused; and post_bn (a BN "
               "after the sum)")
POST_BN = "post_bn"
# QARepVGG (Chu et al., AAAI 2024): no BN on the 1x1 and identity branches, one BN after the sum,
# so that the fused kernel's channels and the block's outputs have ranges int8 can hold.
QAREPVGG_BRANCHES = ["conv", "conv1x1_plain", "identity_plain", POST_BN]
EDGE_BRANCHES = ("sobel_x", "sobel_y", "laplacian")
TASKS = ("classification", "super-resolution")
SR_SCALES = (2, 3, 4)


def parse_branch(name: str, kernel: int) -> tuple[str, object]:
    """(kind, argument) of a branch name in a layer with a ``kernel`` x ``kernel`` conv;
    a ValueError names the known branches for a name it does not know."""
    bn = not name.endswith("_plain") or name == "identity_plain"
    if not bn:
        name = name[: -len("_plain")]
    if name == "conv":
        return "conv", (kernel, kernel, bn)
    if name in ("identity", "identity_plain"):
        return "identity", name == "identity"
    m = re.fullmatch(r"conv(\d+|k)x(\d+|k)", name)
    if m:
        kh, kw = (kernel if g == "k" else int(g) for g in m.groups())
        if kh % 2 and kw % 2 and kh <= kernel and kw <= kernel:
            return "conv", (kh, kw, bn)
        raise ValueError(f"branch {name!r}: a {kh}x{kw} conv must have odd sides and fit the {kernel}x{kernel} "
                         "layer kernel")
    if not bn:
        raise ValueError(f"branch {name!r}_plain: only convs take the _plain suffix; known: {BRANCH_HELP}")
    if name in ("conv1x1_kxk", "conv1x1_avg", "expand_squeeze", "fused", POST_BN):
        return name, None
    if name in EDGE_BRANCHES:
        return "edge", name
    m = re.fullmatch(r"conv_x(\d+)", name)
    if m and int(m.group(1)) >= 1:
        return "parallel", int(m.group(1))
    raise ValueError(f"unknown branch {name!r}; known: {BRANCH_HELP}")


@dataclass
class LayerSpec:
    """One conv block: ``out_channels`` of a ``kernel`` x ``kernel`` conv at ``stride``."""

    out_channels: int
    kernel: int = 3
    stride: int = 1
    branches: list[str] = field(default_factory=lambda: ["conv", "conv1x1", "identity"])
    gated: bool = True
    groups: int = 1
    dilation: int = 1
    # Intermediate widths of two-stage branches (conv1x1_kxk, expand_squeeze) by branch name;
    # extraction writes them so that a subnet keeps its supernet's intermediate maps.
    mid_channels: dict[str, int] | None = None
    act: str | None = None  # None: the spec's activation; "identity" for an SR tail
    # For an extracted block whose identity branch survived: for each output channel the
    # index of the input channel it copies, or -1 where that input channel was pruned.
    identity_map: list[int] | None = None


@dataclass
class ArchSpec:
    """A VGG-like network: conv blocks in sequence, then a task head.

    classification: global average pool + linear to ``num_classes``.
    super-resolution: the last layer outputs ``in_channels * scale**2`` channels (its width is
    fixed, never gated); a global residual adds the input repeated ``scale**2`` times along
    channels, and PixelShuffle(scale) makes the HR image. ``input_size`` is the LR size.
    """

    name: str
    layers: list[LayerSpec]
    in_channels: int = 3
    input_size: tuple[int, int] = (224, 224)
    num_classes: int = 1000
    task: str = "classification"
    act: str = "relu"
    scale: int = 1
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        self.input_size = tuple(self.input_size)  # JSON gives lists
        self.layers = [lay if isinstance(lay, LayerSpec) else LayerSpec(**lay) for lay in self.layers]
        self.validate()

    # ---- derived facts -------------------------------------------------------------
    @property
    def widths(self) -> list[int]:
        return [lay.out_channels for lay in self.layers]

    def in_channels_of(self, index: int) -> int:
        return self.in_channels if index == 0 else self.layers[index - 1].out_channels

    def feature_sizes(self) -> list[tuple[int, int]]:
        """Output (H, W) of every layer, with 'same' padding and the layer's stride."""
        h, w = self.input_size
        sizes = []
        for lay in self.layers:
            h, w = -(-h // lay.stride), -(-w // lay.stride)
            sizes.append((h, w))
        return sizes

    def _check_sizes(self) -> None:
        """Types and bounds of every size, before anything compares or allocates with them:
        a spec.json is a file, and a file may say anything."""
        where = f"spec {self.name!r}"
        if not isinstance(self.layers, list) or not 1 <= len(self.layers) <= MAX_LAYERS:
            raise RepasError(f"{where}: layers must be a list of 1 to {MAX_LAYERS} layers")
        check_int(self.in_channels, f"{where}: in_channels", 1, MAX_CHANNELS)
        check_int(self.num_classes, f"{where}: num_classes", 0, 1 << 20)
        check_int(self.scale, f"{where}: scale", 1, 8)
        if len(self.input_size) != 2:
            raise RepasError(f"{where}: input_size must be [height, width], got {list(self.input_size)}")
        for side in self.input_size:
            check_int(side, f"{where}: input_size", 1, MAX_SIDE)
        for i, lay in enumerate(self.layers):
            at = f"{where}, layer {i}"
            check_int(lay.out_channels, f"{at}: out_channels", 1, MAX_CHANNELS)
            check_int(lay.kernel, f"{at}: kernel", 1, MAX_KERNEL)
            check_int(lay.stride, f"{at}: stride", 1, MAX_KERNEL)
            check_int(lay.groups, f"{at}: groups", 1, MAX_CHANNELS)
            check_int(lay.dilation, f"{at}: dilation", 1, MAX_KERNEL)
            if not isinstance(lay.branches, list) or not all(isinstance(b, str) for b in lay.branches):
                raise RepasError(f"{at}: branches must be a list of branch names; known: {BRANCH_HELP}")
            if not isinstance(lay.gated, bool):
                raise RepasError(f"{at}: gated must be true or false, got {lay.gated!r:.40}")
            for name, width in (lay.mid_channels or {}).items():
                check_int(width, f"{at}: mid_channels[{name!r}]", 1, MAX_CHANNELS)
            for j in lay.identity_map or []:
                check_int(j, f"{at}: identity_map", -1, MAX_CHANNELS)

    def validate(self) -> None:
        self._check_sizes()
        if self.task not in TASKS:
            raise RepasError(f"spec {self.name!r}: unknown task {self.task!r}; expected one of {TASKS}")
        if not self.layers:
            raise RepasError(f"spec {self.name!r} has no layers")
        if self.task == "super-resolution":
            tail = self.layers[-1]
            if self.scale not in SR_SCALES:
                raise RepasError(f"spec {self.name!r}: super-resolution scale must be one of {SR_SCALES}, "
                                 f"got {self.scale}")
            if tail.out_channels != self.in_channels * self.scale ** 2 or tail.gated:
                raise RepasError(f"spec {self.name!r}: the SR tail must output in_channels * scale^2 = "
                                 f"{self.in_channels * self.scale ** 2} channels and not be gated")
            if any(lay.stride != 1 for lay in self.layers):
                raise RepasError(f"spec {self.name!r}: super-resolution layers keep the LR size (stride 1)")
        elif self.scale != 1:
            raise RepasError(f"spec {self.name!r}: scale applies to super-resolution only")
        for i, lay in enumerate(self.layers):
            where = f"spec {self.name!r}, layer {i}"
            if lay.out_channels < 1:
                raise RepasError(f"{where}: out_channels must be >= 1, got {lay.out_channels}")
            if lay.kernel < 1 or lay.kernel % 2 == 0:
                raise RepasError(f"{where}: kernel must be a positive odd number, got {lay.kernel}")
            if not lay.branches:
                raise RepasError(f"{where}: no branches; known: {BRANCH_HELP}")
            if "fused" in lay.branches and len(lay.branches) > 1:
                raise RepasError(f"{where}: 'fused' is a whole deploy-form layer and stands alone")
            if lay.branches.count(POST_BN) > 1 or lay.branches == [POST_BN]:
                raise RepasError(f"{where}: {POST_BN} (a BatchNorm after the sum) comes once, beside at least "
                                 f"one branch, e.g. {QAREPVGG_BRANCHES}")
            for name in lay.branches:
                try:
                    parse_branch(name, lay.kernel)
                except ValueError as e:
                    raise RepasError(f"{where}: {e}") from None
            c_in = self.in_channels_of(i)
            if lay.groups < 1 or c_in % lay.groups or lay.out_channels % lay.groups:
                raise RepasError(f"{where}: groups={lay.groups} must divide in ({c_in}) and out "
                                 f"({lay.out_channels}) channels")
            if lay.gated and lay.groups != 1:
                raise RepasError(f"{where}: a gated (prunable) layer needs groups=1; set gated: false")
            if lay.dilation < 1:
                raise RepasError(f"{where}: dilation must be >= 1, got {lay.dilation}")
            has_identity = any(b in ("identity", "identity_plain") for b in lay.branches)
            if has_identity and lay.stride != 1:
                raise RepasError(f"{where}: an identity branch needs stride 1, got {lay.stride}")
            if has_identity and lay.identity_map is None:
                if lay.stride != 1 or self.in_channels_of(i) != lay.out_channels:
                    raise RepasError(
                        f"{where}: an identity branch needs stride 1 and in == out channels "
                        f"(got stride {lay.stride}, {self.in_channels_of(i)} -> {lay.out_channels})"
                    )
            if lay.identity_map is not None:
                if len(lay.identity_map) != lay.out_channels:
                    raise RepasError(f"{where}: identity_map has {len(lay.identity_map)} entries, "
                                     f"expected out_channels={lay.out_channels}")
                c_in = self.in_channels_of(i)
                if any(j < -1 or j >= c_in for j in lay.identity_map):
                    raise RepasError(f"{where}: identity_map indices must lie in [-1, {c_in})")

    # ---- files ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
        if not isinstance(d, dict):
            raise RepasError(f"a spec is a JSON object of fields, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise RepasError(f"spec has unknown keys {sorted(unknown)}; known: {sorted(names)}")
        version = d.get("version", SPEC_VERSION)
        if not isinstance(version, int) or isinstance(version, bool):
            raise RepasError(f"spec version must be a whole number, got {version!r:.40}")
        if version > SPEC_VERSION:
            raise RepasError(f"spec version {d['version']} is newer than this repas understands "
                             f"({SPEC_VERSION}); upgrade repas")
        try:
            return cls(**d)
        except TypeError as e:
            raise RepasError(f"malformed spec: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | Path) -> ArchSpec:
        path = Path(path)
        if path.is_dir():
            path = path / "spec.json"
        if not path.exists():
            raise RepasError(f"no spec at {path}: a model directory holds spec.json + weights.safetensors")
        d = read_json(path, fix="the file may be truncated")
        try:
            return cls.from_dict(d)
        except RepasError as e:
            raise RepasError(f"{path}: {e}") from None
