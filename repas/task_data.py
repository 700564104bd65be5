"""The data and the task of a pipeline, behind one small interface for the stages.

``make_task_data(cfg)`` gives a classification, super-resolution or denoising adapter that knows how
to shape the search space for its data, batch the training data, build the task (loss,
metrics), and score an exported model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from repas.config import PipelineConfig, TrainConfig
from repas.data import DatasetSplits, TensorLoader, load_dataset
from repas.data.noisy_images import NoisyPatchLoader, check_sigma, fixed_noise, noisy_images
from repas.data.sr_images import (
    TEST_CROP,
    PatchLoader,
    check_scale,
    eval_images,
    image_files,
    load_pairs,
    packaged_photos,
    set7_pkg,
    split_packaged,
    to_model_input,
)
from repas.deploy.runner import Run, upscale_array
from repas.errors import RepasError
from repas.spec import ArchSpec
from repas.supernet import create_supernet_spec, with_branches
from repas.tasks import ClassificationTask
from repas.tasks.denoising import DenoisingTask
from repas.tasks.super_resolution import SuperResolutionTask, receptive_radius, sr_scores

SR_DATASETS = ("sr-photos", "sr-folder")
DENOISE_DATASETS = ("denoise-photos", "denoise-folder")  # the same images, clean, with Gaussian noise


class ClassificationData:
    primary = "top1"

    def __init__(self, cfg: PipelineConfig) -> None:
        d = cfg.data
        self.cfg = cfg
        self.data: DatasetSplits = load_dataset(d.name, d.root, install=d.install)
        if d.train_subset:
            self.data.train = self.data.train.subset(d.train_subset)
        if d.test_subset:
            self.data.test = self.data.test.subset(d.test_subset)
        self.val = None
        if cfg.val_fraction:
            self.data.train, self.val = self.data.train.split_off(cfg.val_fraction, cfg.seed)

    task_name = "classification"

    def shape_spec(self, spec_name: str) -> dict[str, Any]:
        c, h, w = self.data.image_shape
        return {"in_channels": c, "input_size": (h, w), "num_classes": self.data.num_classes}

    def example_shape(self) -> tuple[int, ...]:
        """An input's shape, batch 1."""
        return (1, *self.data.image_shape)

    def train_loader(self, tcfg: TrainConfig) -> TensorLoader:
        return TensorLoader(self.data.train, tcfg.batch_size, shuffle=True, augment=self.cfg.data.augment,
                            seed=self.cfg.seed, drop_last=True)

    def eval_batches(self, tcfg: TrainConfig) -> TensorLoader:
        return TensorLoader(self.data.test, tcfg.eval_batch_size)

    def val_batches(self, tcfg: TrainConfig) -> TensorLoader:
        """The validation split (held out of the training data), batched as the test split."""
        return TensorLoader(_need_val(self.val), tcfg.eval_batch_size)

    def task(self, tcfg: TrainConfig, spec: ArchSpec) -> ClassificationTask:
        return ClassificationTask(tcfg.label_smoothing)

    def score(self, run: Run, spec: ArchSpec, shape: tuple[int, ...]) -> dict[str, float]:
        """Top-1 (%) of an exported model on the test split, one image at a time (batch 1)."""
        images = self.data.test.normalize(self.data.test.images).numpy()
        labels = self.data.test.labels.numpy()
        correct = sum(int(np.argmax(run(images[i:i + 1])) == labels[i]) for i in range(len(labels)))
        return {"top1": 100.0 * correct / max(len(labels), 1)}

    def calibration_inputs(self, shape: tuple[int, ...], n: int) -> list[torch.Tensor]:
        """``n`` training images, normalized as in training (no augmentation), in a fixed
        random order: the inputs that calibrate int8 quantization."""
        train = self.data.train
        order = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(self.cfg.seed))[:n]
        return [train.normalize(train.images[order])]

    def bundle_input(self, spec: ArchSpec, shape: tuple[int, ...]) -> dict[str, Any]:
        """How a deployed model's input is made from an image (``model.json``)."""
        test = self.data.test
        return {"shape": list(shape),
                "colour": "grayscale" if spec.in_channels == 1 else "rgb", "pixel_scale": 1 / 255,
                "mean": list(test.mean), "std": list(test.std)}

    def labels(self) -> list[str]:
        return list(self.data.test.classes)

    def baseline(self) -> dict[str, float] | None:
        return None

    def describe(self) -> str:
        d = self.data
        val = f", {len(self.val)} validation" if self.val is not None else ""
        return (f"{self.cfg.data.name}: {len(d.train)} train{val} and {len(d.test)} test images, "
                f"shape {d.image_shape}, {d.num_classes} classes")


class SuperResolutionData:
    primary = "psnr"
    task_name = "super-resolution"

    def __init__(self, cfg: PipelineConfig, scale: int | None = None) -> None:
        d = cfg.data
        self.cfg, self.colour = cfg, d.colour.lower()
        self.scale = check_scale(d.scale) if scale is None else scale  # 1: clean images (denoising)
        if self.colour not in ("y", "rgb"):
            raise RepasError(f"data.colour must be 'y' or 'rgb', got {d.colour!r}")
        cache = Path(d.cache_dir).expanduser() if d.cache_dir else None
        source = d.name.split("-", 1)[-1]  # sr-photos, denoise-photos: photos
        if d.name in SR_DATASETS + DENOISE_DATASETS and source == "photos":
            train, test = split_packaged(packaged_photos(install=d.install))
            down = d.hr_downscale or 2
            self.train_pairs = load_pairs(train, self.scale, down, min_lr=d.patch, cache_dir=cache)
            self.test_pairs = load_pairs(test, self.scale, down, TEST_CROP, cache_dir=cache)
        elif d.name in SR_DATASETS + DENOISE_DATASETS and source == "folder":
            if d.root is None:
                raise RepasError(f"data.name {d.name} needs --data DIR (a folder of HR images or a DIV2K layout)")
            down = d.hr_downscale or 1
            self.train_pairs = load_pairs(image_files(d.root), self.scale, down, min_lr=d.patch, cache_dir=cache)
            self.test_pairs = (load_pairs(image_files(d.test_root), self.scale, down, TEST_CROP, cache_dir=cache)
                               if d.test_root else load_pairs(set7_pkg(), self.scale))
        else:
            raise RepasError(f"unknown super-resolution dataset {d.name!r}; known: {', '.join(SR_DATASETS)}")
        if d.train_subset:
            self.train_pairs = self.train_pairs[:d.train_subset]
        if d.test_subset:
            self.test_pairs = self.test_pairs[:d.test_subset]
        self.val_pairs = None
        if cfg.val_fraction:
            if len(self.train_pairs) < 2:
                raise RepasError(f"a validation split needs at least 2 training images, {d.name} has "
                                 f"{len(self.train_pairs)}")
            n = min(len(self.train_pairs) - 1, max(1, round(cfg.val_fraction * len(self.train_pairs))))
            order = np.random.default_rng(cfg.seed).permutation(len(self.train_pairs))
            self.val_pairs = [self.train_pairs[i] for i in sorted(order[:n])]
            self.train_pairs = [self.train_pairs[i] for i in sorted(order[n:])]

    def shape_spec(self, spec_name: str) -> dict[str, Any]:
        return {"in_channels": 1 if self.colour == "y" else 3, "scale": self.scale}

    def example_shape(self) -> tuple[int, ...]:
        """A training input's shape, batch 1: the models' costs are counted at it."""
        return (1, 1 if self.colour == "y" else 3, self.cfg.data.patch, self.cfg.data.patch)

    def describe(self) -> str:
        return self._describe(f"x{self.scale}", "HR ")

    def _describe(self, what: str, pixels_of: str) -> str:
        pixels = sum(p.hr.shape[0] * p.hr.shape[1] for p in self.train_pairs) / 1e6
        val = f", {len(self.val_pairs)} validation" if self.val_pairs else ""
        return (f"{self.cfg.data.name} {what} ({self.colour}): {len(self.train_pairs)} train images "
                f"({pixels:.1f} {pixels_of}megapixels){val}, {len(self.test_pairs)} test images "
                f"({', '.join(p.name for p in self.test_pairs)})")

    def train_loader(self, tcfg: TrainConfig) -> PatchLoader:
        d = self.cfg.data
        return PatchLoader(self.train_pairs, self.scale, self.colour, d.patch, tcfg.batch_size,
                           d.batches_per_epoch, self.cfg.seed)

    def eval_batches(self, tcfg: TrainConfig) -> list[tuple[torch.Tensor, np.ndarray]]:
        return eval_images(self.test_pairs, self.colour)

    def val_batches(self, tcfg: TrainConfig) -> list[tuple[torch.Tensor, np.ndarray]]:
        """The validation photos (held out of the training photos), whole."""
        return eval_images(_need_val(self.val_pairs), self.colour)

    def task(self, tcfg: TrainConfig, spec: ArchSpec) -> SuperResolutionTask:
        return SuperResolutionTask(self.scale, overlap=receptive_radius(spec))

    def score(self, run: Run, spec: ArchSpec, shape: tuple[int, ...]) -> dict[str, float]:
        """PSNR / SSIM of an exported model of static input ``shape`` over the test images,
        tiled as ``repas predict`` tiles them."""
        tile, overlap = tuple(shape[2:]), receptive_radius(spec)

        def predict(lr: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(upscale_array(run, lr[0].numpy(), self.scale, tile=tile, overlap=overlap))[None]

        whole = SuperResolutionTask(self.scale, tile=1 << 30)  # one call per image: the tiling is above
        return whole.evaluate(predict, self.eval_batches(self.cfg.train))

    def calibration_inputs(self, shape: tuple[int, ...], n: int) -> list[torch.Tensor]:
        """``n`` crops of ``shape`` (1, C, h, w) from the training images (edge-padded where an
        image is smaller), at fixed random places: the inputs that calibrate int8 quantization."""
        rng = np.random.default_rng(self.cfg.seed)
        h, w = shape[2:]
        out = []
        for i in range(n):
            x = to_model_input(self.train_pairs[i % len(self.train_pairs)].lr, self.colour)[0].numpy()
            x = np.pad(x, ((0, 0), (0, max(h - x.shape[1], 0)), (0, max(w - x.shape[2], 0))), mode="edge")
            y0, x0 = rng.integers(0, x.shape[1] - h + 1), rng.integers(0, x.shape[2] - w + 1)
            out.append(torch.from_numpy(np.ascontiguousarray(x[None, :, y0:y0 + h, x0:x0 + w])))
        return out

    def bundle_input(self, spec: ArchSpec, shape: tuple[int, ...]) -> dict[str, Any]:
        return {"shape": list(shape), "colour": self.colour, "pixel_scale": 1 / 255,
                "overlap": receptive_radius(spec)}

    def labels(self) -> list[str]:
        return []

    def baseline(self) -> dict[str, float]:
        """Bicubic upscaling of the LR test images, scored by the same protocol."""
        return bicubic_scores(self.test_pairs, self.colour, self.scale)


class DenoisingData(SuperResolutionData):
    """Gaussian denoising (``data.sigma`` on the 0-255 scale) of the super-resolution images:
    the same TRAIN / TEST photos (or folder), clean, as targets; the input is the image plus
    noise (``repas.data.noisy_images``). Scored in PSNR / SSIM on Y, as SR at scale 1."""

    task_name = "denoising"
    # Tiles of the deployed model overlap by this many pixels: the U-Net of repas.models sees
    # 23 pixels away; a deeper encoder-decoder needs export.tile and this raised together.
    overlap = 32

    def __init__(self, cfg: PipelineConfig) -> None:
        self.sigma = check_sigma(cfg.data.sigma)
        tile = cfg.export.tile or [cfg.data.patch] * 2  # the exported model's input (export_shape)
        if min(tile) <= 2 * self.overlap:  # checked before anything trains
            raise RepasError(f"the exported denoiser's input tile {'x'.join(map(str, tile))} leaves nothing between "
                             f"its {self.overlap}-pixel overlaps: set export.tile to at least "
                             f"[{4 * self.overlap}, {4 * self.overlap}]")
        super().__init__(cfg, scale=1)

    def describe(self) -> str:
        return self._describe(f"Gaussian sigma {self.sigma:g}", "")

    def train_loader(self, tcfg: TrainConfig) -> NoisyPatchLoader:
        return NoisyPatchLoader(super().train_loader(tcfg), self.sigma, self.cfg.seed)

    def eval_batches(self, tcfg: TrainConfig) -> list[tuple[torch.Tensor, np.ndarray]]:
        return noisy_images(self.test_pairs, self.colour, self.sigma)

    def val_batches(self, tcfg: TrainConfig) -> list[tuple[torch.Tensor, np.ndarray]]:
        return noisy_images(_need_val(self.val_pairs), self.colour, self.sigma)

    def task(self, tcfg: TrainConfig, spec: Any) -> DenoisingTask:
        return DenoisingTask()

    def score(self, run: Run, spec: Any, shape: tuple[int, ...]) -> dict[str, float]:
        """PSNR / SSIM of an exported model of static input ``shape`` on the noisy test
        images, tiled as ``repas predict`` tiles them."""
        tile = tuple(shape[2:])

        def predict(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(upscale_array(run, x[0].numpy(), 1, tile=tile, overlap=self.overlap))[None]

        return DenoisingTask(multiple=1).evaluate(predict, self.eval_batches(self.cfg.train))

    def calibration_inputs(self, shape: tuple[int, ...], n: int) -> list[torch.Tensor]:
        return [fixed_noise(x, self.sigma, i) for i, x in enumerate(super().calibration_inputs(shape, n))]

    def bundle_input(self, spec: Any, shape: tuple[int, ...]) -> dict[str, Any]:
        return {"shape": list(shape), "colour": self.colour, "pixel_scale": 1 / 255, "overlap": self.overlap,
                "noise_sigma": self.sigma}

    def baseline(self) -> dict[str, float]:
        """The noisy input itself, scored by the same protocol."""
        return DenoisingTask().evaluate(lambda x: x, self.eval_batches(self.cfg.train))


def bicubic_scores(pairs: list, colour: str, scale: int) -> dict[str, float]:
    """Mean PSNR / SSIM of bicubic upscaling of (HR, LR) pairs, by the SR protocol."""
    from repas.data.sr_images import to_model_input

    scores = []
    for p in pairs:
        h, w = p.hr.shape[:2]
        up = np.array(Image.fromarray(p.lr).resize((w, h), Image.BICUBIC))
        out = to_model_input(up, "y")[0] if colour == "y" else torch.from_numpy(up).permute(2, 0, 1).float() / 255
        scores.append(sr_scores(out, p.hr, scale))
    return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}


def _need_val(split: Any) -> Any:
    if split is None:
        raise RepasError("no validation split: set data.val_fraction (e.g. 0.1) to hold part of the training data out")
    return split


TaskData = ClassificationData | SuperResolutionData | DenoisingData


def task_data_class(cfg: PipelineConfig) -> type[TaskData]:
    """The adapter ``cfg.data.name`` takes (its ``primary`` metric is known before any data loads)."""
    if cfg.data.name in SR_DATASETS:
        return SuperResolutionData
    if cfg.data.name in DENOISE_DATASETS:
        return DenoisingData
    return ClassificationData


def make_task_data(cfg: PipelineConfig) -> TaskData:
    return task_data_class(cfg)(cfg)


def shaped_spec(cfg: PipelineConfig, data: TaskData) -> ArchSpec:
    """The configured search space shaped for the data, with the configured block."""
    if isinstance(data, DenoisingData):
        raise RepasError(f"data.name {cfg.data.name} trains your own image-to-image model: set model.builder "
                         "(e.g. repas.models:UNet with model.kwargs {channels: 1, width: 16}); the search spaces "
                         "are for classification and super-resolution")
    spec = create_supernet_spec(cfg.model.space, **data.shape_spec(cfg.model.space))
    if (spec.task == "super-resolution") != isinstance(data, SuperResolutionData):
        raise RepasError(f"search space {cfg.model.space!r} is for {spec.task}, but data.name {cfg.data.name!r} "
                         "is not: pair an ecbsr-* space with sr-photos / sr-folder, and a repvgg-* space with "
                         "an image classification dataset")
    return with_branches(spec, cfg.model.branches) if cfg.model.branches else spec


