"""Whole small datasets held in memory as tensors, batched and augmented on tensors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class TensorImages:
    """uint8 images (N, C, H, W) with int64 labels, normalised on the way out."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images.float() / 255.0 - mean) / std

    def subset(self, n: int) -> TensorImages:
        return self.take(slice(0, n))

    def take(self, index: slice | torch.Tensor) -> TensorImages:
        return TensorImages(self.images[index], self.labels[index], self.mean, self.std, self.classes)

    def split_off(self, fraction: float, seed: int) -> tuple[TensorImages, TensorImages]:
        """(the rest, a held-out ``fraction``): images drawn at random with ``seed``, so every
        stage of a run holds out the same ones."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        n = max(1, round(fraction * len(self)))
        return self.take(order[n:].sort().values), self.take(order[:n].sort().values)


def random_crop_flip(images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator,
                     drawn: int | None = None, keep: slice = slice(None)) -> torch.Tensor:
    """Per-image random crops from a zero-padded batch, and random horizontal flips.

    The random offsets and flips are drawn for ``drawn`` images (default: all of
    ``images``) and those of ``keep`` applied to ``images``: a process of a distributed run
    passes its slice of the global batch and augments it exactly as one process would."""
    n, _, h, w = images.shape
    drawn = n if drawn is None else drawn
    dev = images.device  # the draws come from a CPU generator; the work runs where the images are
    if pad > 0:
        oy = torch.randint(0, 2 * pad + 1, (drawn,), generator=generator)[keep].to(dev)
        ox = torch.randint(0, 2 * pad + 1, (drawn,), generator=generator)[keep].to(dev)
        padded = F.pad(images, [pad, pad, pad, pad])
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        batch = torch.arange(n, device=dev)[:, None, None, None]
        chans = torch.arange(images.shape[1], device=dev)[None, :, None, None]
        images = padded[batch, chans, rows, cols]
    if flip:
        flips = (torch.rand(drawn, generator=generator) < 0.5)[keep].to(dev)
        images = torch.where(flips[:, None, None, None], images.flip(-1), images)
    return images


class TensorLoader:
    """Batches of (normalised images, labels); the order and the augmentation of epoch e
    depend only on (seed, e), so a resumed run sees exactly the data it would have seen."""

    def __init__(self, data: TensorImages, batch_size: int, shuffle: bool = False, augment: bool = False,
                 seed: int = 0, crop_pad: int = 2, flip: bool = True, drop_last: bool = False) -> None:
        self.data, self.batch_size = data, batch_size
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self.crop_pad, self.flip, self.drop_last = crop_pad, flip, drop_last
        self.epoch = 0
        self.rank, self.world = 0, 1
        self.device = torch.device("cpu")

    def to_device(self, device: torch.device) -> None:
        """Crop, flip and normalise on ``device``: uint8 images cross to a GPU (4x fewer
        bytes than float) and the augmentation runs there, so the CPU does not starve it."""
        self.device = torch.device(device)

    def shard(self, rank: int, world: int) -> None:
        """Yield only this process's slice of every (global) batch: rank r of w gets the
        r-th of w equal parts."""
        self.rank, self.world = rank, world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.data)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            part = len(idx) // self.world
            keep = slice(self.rank * part, (self.rank + 1) * part) if self.world > 1 else slice(None)
            images = self.data.images[idx[keep]].to(self.device, non_blocking=True)
            if self.augment:
                images = random_crop_flip(images, self.crop_pad, self.flip, gen, drawn=len(idx), keep=keep)
            yield self.data.normalize(images), self.data.labels[idx[keep]].to(self.device, non_blocking=True)
