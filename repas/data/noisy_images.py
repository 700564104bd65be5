"""Gaussian noise for denoising: training patches of clean images with fresh noise in every
batch (drawn from the loader's seed and epoch, so a resumed run sees the same data), and
test inputs whose noise depends only on the image's index (every run, whatever its seed, is
scored on the same noisy photos). Noise is added in [0, 1] units and not clipped, as in the
DnCNN benchmarks; ``sigma`` is on the 0-255 scale."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from repas.data.sr_images import PatchLoader, SRPair, to_model_input
from repas.errors import RepasError


def check_sigma(sigma: float) -> float:
    if not 0 < sigma <= 255:
        raise RepasError(f"data.sigma is the noise's standard deviation on the 0-255 scale (e.g. 25), got {sigma}")
    return float(sigma)


def fixed_noise(clean: torch.Tensor, sigma: float, index: int) -> torch.Tensor:
    """``clean`` plus the noise of test image ``index`` (the same in every run)."""
    gen = torch.Generator().manual_seed(1_000_003 + index)
    return clean + (sigma / 255.0) * torch.randn(clean.shape, generator=gen)


def noisy_images(pairs: list[SRPair], colour: str, sigma: float) -> list[tuple[torch.Tensor, np.ndarray]]:
    """(noisy input (1, C, H, W), clean uint8 (H, W, 3)) for each image, with fixed noise."""
    return [(fixed_noise(to_model_input(p.hr, colour), sigma, i), p.hr) for i, p in enumerate(pairs)]


class NoisyPatchLoader:
    """(noisy, clean) batches: the clean patches of a scale-1 ``PatchLoader`` (flips and
    rotations included) with fresh Gaussian noise."""

    def __init__(self, patches: PatchLoader, sigma: float, seed: int) -> None:
        if patches.scale != 1:
            raise RepasError(f"denoising patches come from a scale-1 PatchLoader, got scale {patches.scale}")
        self.patches, self.sigma, self.seed = patches, check_sigma(sigma), seed

    def set_epoch(self, epoch: int) -> None:
        self.patches.set_epoch(epoch)

    def shard(self, rank: int, world: int) -> None:
        self.patches.shard(rank, world)

    def __len__(self) -> int:
        return len(self.patches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.patches.epoch + 500_009)
        for _, clean in self.patches:
            yield clean + (self.sigma / 255.0) * torch.randn(clean.shape, generator=gen), clean
