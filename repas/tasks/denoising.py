"""Gaussian denoising: the super-resolution protocol at scale 1 (L1 loss; PSNR / SSIM on Y of
the quantized output against the clean image, no border cropped), with one whole-image call
per test image, edge-padded to a multiple of ``multiple`` pixels (an encoder-decoder with
k poolings needs 2^k) and cropped back."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repas.tasks.super_resolution import Predict, SuperResolutionTask


class DenoisingTask(SuperResolutionTask):
    def __init__(self, multiple: int = 8) -> None:
        super().__init__(scale=1, overlap=0)
        self.border, self.multiple = 0, multiple

    def restore(self, predict: Predict, noisy: torch.Tensor) -> torch.Tensor:
        h, w = noisy.shape[-2:]
        pad_h, pad_w = -h % self.multiple, -w % self.multiple
        x = F.pad(noisy, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else noisy
        return predict(x)[..., :h, :w]
