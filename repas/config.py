"""Configs are dataclasses loaded from YAML, strict about unknown keys.

``load_config(path, overrides)`` reads a YAML file into ``PipelineConfig``; an unknown key
is an error that suggests the nearest valid one. Overrides are ``section.key=value``
strings (``search.epochs=2``), parsed as YAML scalars.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from repas.errors import RepasError
from repas.strict_yaml import apply_overrides, from_dict, set_value

COST_METRICS = ("macs", "params", "latency")
ALLOCATIONS = ("ranked", "threshold")


@dataclass
class DataConfig:
    # fashion-mnist, mnist, cifar10, cifar100, image-folder (classification);
    # sr-photos (the packaged photographs), sr-folder (HR images of --data DIR) for SR;
    # denoise-photos, denoise-folder: the same images, clean, with Gaussian noise added
    name: str = "fashion-mnist"
    root: str | None = None  # folder of the dataset's files; None: the packaged copy
    install: bool = True  # install the Debian package(s) when missing and we can
    augment: bool = True  # classification: random crop (pad 2) and horizontal flip
    train_subset: int | None = None  # first N training images only (quick runs, tests)
    test_subset: int | None = None
    # super-resolution
    scale: int = 2
    colour: str = "y"  # y (BT.601 luma, the standard protocol) or rgb
    patch: int = 32  # LR patch side for training
    batches_per_epoch: int = 200
    hr_downscale: int | None = None  # HR = photo / this (None: 2 for sr-photos' JPEGs, 1 for a folder)
    test_root: str | None = None  # sr-folder: HR test images (None: Set7-pkg)
    cache_dir: str | None = "~/.cache/repas/sr"  # decoded (HR, LR) pairs
    sigma: float = 25.0  # denoising: the Gaussian noise's standard deviation on the 0-255 scale
    # Fraction of the training data held out as a validation split (images; SR: photos), for
    # the error-tolerance search. 0: none, and search.max_drop then holds out 0.1. Keep it
    # the same for every stage of a run, so the dense net never trains on it.
    val_fraction: float = 0.0

    def __post_init__(self) -> None:
        _at_least(self, "data", patch=1, batches_per_epoch=1, scale=1)
        if not 0.0 <= self.val_fraction < 1.0:
            raise RepasError(f"data val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 < self.sigma <= 255:
            raise RepasError(f"data sigma is the noise's standard deviation on the 0-255 scale (e.g. 25), "
                             f"got {self.sigma}")


@dataclass
class ModelConfig:
    space: str = "repvgg-fmnist"
    # Another block for every layer of the space, e.g. [conv, conv1x1, conv1x1_kxk, conv1x1_avg,
    # identity] (DBB) or [conv_x4, conv1x1, identity] (MobileOne-style); None keeps the space's.
    branches: list[str] | None = None
    # Your own CNN instead of a search space: "package.module:function" (e.g.
    # "torchvision.models:resnet18", "timm:create_model"), called with ``kwargs``; its widths are
    # searched through repas.graph (``repas pipeline`` then runs repas.stages.user_model).
    builder: str | None = None
    kwargs: dict[str, Any] | None = None
    # A builder is code that runs: those of torchvision.models, timm:create_model and repas.models
    # load by default; any other only when trusted here (or --trust-builder). A config recorded
    # in a run directory can never trust one: only the config you pass (--config, --set) can.
    trust_builder: bool = False
    trusted_builders: list[str] | None = None  # exact 'package.module:function' names
    weights: str | None = None  # trained dense weights (.safetensors); None: train.epochs from scratch


@dataclass
class TrainConfig:
    """One recipe serves dense training, search and fine-tuning."""

    epochs: int = 5
    batch_size: int = 128
    opt: str = "sgd"  # any timm.optim name
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-5
    sched: str = "cosine"  # any timm.scheduler name
    warmup_epochs: int = 0
    min_lr: float = 0.0
    label_smoothing: float = 0.1
    ema: bool = False
    ema_decay: float = 0.998
    eval_batch_size: int = 1000
    # evaluate on the held-out split every N epochs and after the last (0: after the last only);
    # each pass over Fashion-MNIST's 10k test images costs a few seconds an epoch
    eval_every: int = 1
    # also checkpoint every N optimizer updates (0: at epoch ends only); a run killed at any
    # point loses at most N updates, and resumes to the same weights as an uninterrupted run
    checkpoint_every: int = 0
    amp: bool = False  # bf16 autocast for the forward pass (CUDA; also runs on CPU)
    channels_last: bool = False  # NHWC memory format: faster convs on tensor-core GPUs
    compile: bool = False  # torch.compile the training forward
    # Distillation from the dense net (the train stage's output) in the search and fine-tune
    # stages: loss = (1 - distill) * task + distill * teacher term (KL at distill_temperature
    # for classification, L1 to the teacher's image for SR). 0: off.
    distill: float = 0.0
    distill_temperature: float = 4.0
    # Train for this many minutes of wall clock (0: off), e.g. to compare recipes at equal time:
    # the lr schedule runs on elapsed time, as if ``epochs`` (then an upper bound) filled the
    # minutes (so ``warmup_epochs`` is that fraction of them), and training stops after the last
    # epoch that fits. Where the epochs run out first (a fast machine), the schedule follows
    # them instead. The final evaluation comes after the minutes.
    minutes: float = 0.0
    # The sandwich rule, dense stage only (train): every step also trains this many random
    # subnets (each gated layer keeping a random share in [sandwich_min, 1] of its channels, those
    # with the highest filter L1 norms), taught by the full net's output, so that a one-shot
    # search (eagleeye) judges widths the net has trained at. 0: off. Each subnet costs about
    # one more dense step.
    sandwich: int = 0
    sandwich_min: float = 0.25

    def __post_init__(self) -> None:
        _at_least(self, "training", epochs=1, batch_size=1, eval_batch_size=1, checkpoint_every=0, eval_every=0,
                  sandwich=0)
        if not 0.0 < self.sandwich_min <= 1.0:
            raise RepasError(f"training sandwich_min is the narrowest subnet's share of each layer's channels, in "
                             f"(0, 1], got {self.sandwich_min}")
        if not 0.0 <= self.minutes < math.inf:
            raise RepasError(f"training minutes is a wall-clock limit in minutes (0: off), got {self.minutes}")
        if self.lr <= 0:
            raise RepasError(f"training lr must be > 0, got {self.lr}")
        if not 0.0 <= self.distill <= 1.0 or self.distill_temperature <= 0:
            raise RepasError(f"training distill must lie in [0, 1] and distill_temperature be > 0, got "
                             f"{self.distill} and {self.distill_temperature}")


PRECISIONS = ("float", "int8")


@dataclass
class SearchConfig(TrainConfig):
    """Training with gates and a budget: ``task + alpha * (cost / target - 1)^2``."""

    lr: float = 0.02  # from a trained net: a gentler weight lr than training from scratch
    metric: str = "macs"  # macs | params | latency (needs a latency table: repas profile)
    target: float | None = 0.5  # fraction of the dense cost
    target_abs: str | None = None  # absolute cost, e.g. "2.5M" or "1.5ms" (overrides target)
    alpha: float = 5.0
    # the gates' SGD lr; None: 0.05 per 272 gated channels (the budget's pull on each gate
    # falls as 1/channels, so a fixed lr would leave a wide net's gates behind its budget)
    gate_lr: float | None = None
    latency_table: str | None = None  # None: <run_dir>/latency.csv
    # Width and precision searched together: with metric latency, each layer is priced in float
    # or int8 (this table: repas profile --backend executorch-int8), whichever runs it faster at
    # its width; the layers that stay float ship as the int8 .pte's float layers (precision: int8)
    int8_latency_table: str | None = None
    # how widths are chosen: a registered pruning method (repas methods lists them). uniform
    # (the default: width scaling measured at least as accurate as every search at full scale,
    # docs/results.md), eagleeye (the best search), pas (the published method), taylor, l1 ...
    # Methods that train spend `epochs` with their hooks; the others prune the trained net in
    # one shot and fine-tune for those epochs instead
    method: str = "uniform"
    strength: float | None = None  # the baseline's regulariser strength (admm: rho); None: its default
    # methods the pipeline also runs from the same dense net, at the same budget and total
    # epochs, shown beside the searched net in report.md (e.g. [uniform])
    compare: list[str] | None = None
    # Error-tolerance mode (Play-and-Prune): instead of a target, the largest acceptable drop
    # of the validation metric (top-1 points, or PSNR dB) from the dense net's. The target
    # starts at the dense cost and shrinks by `shrink` a round (pas: `round_epochs` of search
    # a round, continuing; a baseline: its method from the trained net at each target) until
    # a round's extracted net drops more; the last net within the drop is the result.
    max_drop: float | None = None
    shrink: float = 0.85
    round_epochs: int = 1
    min_target: float = 0.05  # fraction of the dense cost where the rounds stop in any case
    # The precision the searched net ships in: float, or int8 (its .pte trained by QAT, export.qat).
    precision: str = "float"
    # A latency budget measured, not modelled: the searched net's .pte (XNNPACK, 1 thread, batch
    # 1, in `precision`) runs within this fraction of the dense float net's .pte, both timed on
    # this machine. Uniform widths only; it replaces metric / target. A compare entry
    # "method@float" or "method@int8" is held to the same budget in that precision.
    pte_latency: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.precision not in PRECISIONS:
            raise RepasError(f"search precision {self.precision!r}: one of {', '.join(PRECISIONS)}")
        if self.pte_latency is not None:
            if not 0.0 < self.pte_latency <= 1.0:
                raise RepasError(f"search pte_latency must lie in (0, 1] (a fraction of the dense float net's .pte "
                                 f"latency), got {self.pte_latency}")
            if self.method != "uniform" or self.max_drop is not None:
                raise RepasError("search.pte_latency measures uniform widths: set search.method: uniform (and no "
                                 "max_drop), or give a modelled latency budget (search.metric: latency)")
        for entry in self.compare or []:
            if "@" in entry and entry.split("@", 1)[1] not in PRECISIONS:
                raise RepasError(f"search.compare entry {entry!r}: after '@' comes a precision, one of "
                                 f"{', '.join(PRECISIONS)}")
        if self.max_drop is not None and self.max_drop < 0:
            raise RepasError(f"search max_drop must be >= 0 (a drop in top-1 points or PSNR dB), got {self.max_drop}")
        if not 0.0 < self.shrink < 1.0 or not 0.0 < self.min_target < 1.0:
            raise RepasError(f"search shrink and min_target must lie in (0, 1), got {self.shrink} and "
                             f"{self.min_target}")
        _at_least(self, "search", round_epochs=1)
        if self.strength is not None and self.strength <= 0:
            raise RepasError(f"search strength must be > 0 (or null for the method's default), got {self.strength}")
        from repas.search.methods import method_class  # the registry, with any method a user registered

        for method in [self.method, *(self.compare or [])]:
            method_class(method.split("@", 1)[0])
        if self.alpha < 0 or (self.gate_lr is not None and self.gate_lr <= 0):
            raise RepasError(f"search alpha must be >= 0 and gate_lr > 0, got {self.alpha} and {self.gate_lr}")
        if self.metric not in COST_METRICS:
            raise RepasError(f"search metric {self.metric!r} is unknown; expected one of {COST_METRICS}")
        if self.target_abs is not None:  # read now, so that a NaN or a typo fails before any work
            from repas.search.cost import parse_quantity
            from repas.search.latency import parse_latency

            (parse_latency if self.metric == "latency" else parse_quantity)(self.target_abs)


@dataclass
class ExtractConfig:
    round_to: int = 1  # widths rounded to a multiple (8 suits SIMD lanes); latency: 1 means the table's divisor
    fit: bool = True  # move widths by gate ranking until the cost meets the target
    tolerance: float = 0.03  # fitted cost lies in [target * (1 - tolerance), target]
    # Many subnets from one search (repas extract; the pipeline makes one): targets such as
    # ["1ms", "2ms"] (or MACs / params in search.metric)
    targets: list[str] | None = None
    # how widths meet each of those targets: ranked (importance per unit of cost) or threshold (one global one)
    allocation: str = "ranked"

    def __post_init__(self) -> None:
        _at_least(self, "extract", round_to=1)
        if self.allocation not in ALLOCATIONS:
            raise RepasError(f"extract allocation {self.allocation!r} is unknown; expected one of {ALLOCATIONS}")


@dataclass
class ProfileConfig:
    """Latency tables (``repas profile``); threads come from the export section."""

    backend: str = "onnxruntime"  # onnxruntime | torch | executorch | executorch-int8 (int8 rows)
    divisor: int = 4  # channel counts measured: 1, the multiples of divisor, the full width
    points: int = 8  # a user model's layers (model.builder): about this many channel counts per side
    # A new session runs its first few dozen calls slower (allocation, caches): small layers
    # need these counts; layers of tens of ms (SR at 640x360) are steady with far fewer.
    warmup: int = 20
    runs: int = 200  # timed calls per row, spread over the passes
    passes: int = 5  # rounds over every row, a new session each; a row's time is its best round's median

    def __post_init__(self) -> None:
        _at_least(self, "profile", divisor=1, points=1, warmup=0, runs=1, passes=1)


@dataclass
class ExportConfig:
    """The deployment bundle (``repas export``): model files, checks, int8, latency."""

    threads: int = 1  # intra-op threads for latency (and for repas profile)
    warmup: int = 50
    runs: int = 500
    # onnx and/or pte; null: onnx, plus pte where ExecuTorch is installed
    formats: list[str] | None = None
    int8: bool = True  # also int8 models (post-training, calibrated on training inputs)
    calibration: int | None = None  # calibration inputs; null: 256 images (classification) or 16 tiles (SR, denoising)
    # SR models have a static input: this LR tile [height, width]; null: the spec's input size
    tile: list[int] | None = None
    # int8 .pte by quantization-aware training of the fused net (measured best: docs/int8_fmnist.md)
    # instead of post-training calibration: qat_epochs at qat_lr, observers frozen half way, with
    # the fine-tune's optimizer family (SGD with momentum, or Adam for adam/adamw recipes: SR x2
    # lost 0.23 dB after 5 epochs of SGD, 0.06 after 6 of Adam); qat_lr null: 1e-3 (SGD), 3e-4 (Adam).
    # The .pte is the trained net itself; the int8 .onnx is calibrated on its trained weights.
    qat: bool = False
    qat_epochs: float = 1.0
    qat_lr: float | None = None
    # post-training activation observer: minmax, histogram (default), percentile or mse
    observer: str = "histogram"
    # mixed precision: these layers (names as model.named_modules() gives them, e.g. blocks.0.reparam_conv)
    # stay float in the int8 .pte (post-training, or trained so by QAT); XNNPACK runs both kinds in one
    # delegate
    float_layers: list[str] | None = None
    # measure each layer's int8 sensitivity (the metric with only that layer int8, minus float's) into
    # report.json and model.json's checks: one calibration and one test pass per layer
    sensitivity: bool = False

    def __post_init__(self) -> None:
        _at_least(self, "export", threads=1, warmup=0, runs=1)
        unknown = [f for f in self.formats or [] if f not in ("onnx", "pte")]
        if unknown or self.formats == []:
            raise RepasError(f"export formats {self.formats} must name onnx and/or pte")
        if self.calibration is not None and self.calibration < 1:
            raise RepasError(f"export calibration must be >= 1, got {self.calibration}")
        if self.tile is not None and (len(self.tile) != 2 or min(self.tile) < 1):
            raise RepasError(f"export tile must be [height, width] of positive integers, got {self.tile}")
        if not 0 < self.qat_epochs <= 100 or (self.qat_lr is not None and self.qat_lr <= 0):
            raise RepasError(f"export qat_epochs must lie in (0, 100] and qat_lr be > 0, got {self.qat_epochs} and "
                             f"{self.qat_lr}")
        from repas.deploy.qat import check_observer

        check_observer(self.observer)


@dataclass
class PipelineConfig:
    run_dir: str = "runs/fmnist"
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    finetune: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)

    @property
    def val_fraction(self) -> float:
        """The training data held out for validation: data.val_fraction, or 0.1 when the
        search is in error-tolerance mode and none was set."""
        return self.data.val_fraction or (0.1 if self.search.max_drop is not None else 0.0)


def _at_least(cfg: Any, section: str, **minimums: int) -> None:
    for name, low in minimums.items():
        if getattr(cfg, name) < low:
            raise RepasError(f"{section} {name} must be >= {low}, got {getattr(cfg, name)}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                values: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> PipelineConfig:
    """A PipelineConfig from a YAML file (or ``base``, a config recorded by a stage as a
    dict, or the defaults), ``section.key=value`` overrides (values parsed as YAML) and
    ``values`` set as they are (paths from the command line)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise RepasError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise RepasError(f"{path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise RepasError(f"{path}: a config is a mapping of sections (run_dir:, data:, train: ...), "
                             f"not a {type(data).__name__}")
    elif base is not None:
        data = copy.deepcopy(base)
    for item in overrides or []:  # each checked alone, so that an error names the --set that caused it
        try:
            from_dict(PipelineConfig, apply_overrides({}, [item]), "config")
        except RepasError as e:
            raise RepasError(f"--set {item}: {e}") from None
    apply_overrides(data, overrides or [])
    for key, value in (values or {}).items():
        set_value(data, key, value)
    where = str(path) if path else "the recorded config" if base is not None else "config"
    return from_dict(PipelineConfig, data, where)
