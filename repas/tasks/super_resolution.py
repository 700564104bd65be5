"""Super-resolution: L1 loss; PSNR / SSIM by the standard protocol; tiled full-image inference
(``repas.sr_geometry`` places the tiles, as it does for the deployed runner).

The protocol: outputs are clamped and quantized to uint8, converted to the Y channel of
BT.601 YCbCr (as MATLAB's rgb2ycbcr, Y in [16, 235]), ``scale`` border pixels are cropped,
and PSNR / SSIM (Gaussian window 11, sigma 1.5) are computed on Y with data range 255.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from repas.colour import rgb_to_y, upscale_rgb
from repas.sr_geometry import receptive_radius
from repas.sr_geometry import upscale_tiled as upscale_windows

Predict = Callable[[torch.Tensor], torch.Tensor]


def quantize(image: torch.Tensor) -> np.ndarray:
    """A (C, H, W) float image in [0, 1] as the uint8 (H, W, C) array a user would save."""
    return (image.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def y_channel(image_u8: np.ndarray) -> np.ndarray:
    """The Y channel (float64, [16, 235] for RGB) of a uint8 (H, W, C) image; a one-channel
    image is taken as Y already."""
    return image_u8[..., 0].astype(np.float64) if image_u8.shape[-1] == 1 else rgb_to_y(image_u8)


def crop_border(a: np.ndarray, border: int) -> np.ndarray:
    return a[border:-border, border:-border] if border > 0 else a


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM (Wang et al. 2004): Gaussian window sigma 1.5 truncated at 11 taps, K = (0.01, 0.03);
    the mean is taken away from the borders the window cannot cover, as scikit-image does."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, sigma=1.5, truncate=3.5, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    pad = 5  # (11 - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


def sr_scores(output: torch.Tensor, target_u8: np.ndarray, border: int) -> dict[str, float]:
    """PSNR and SSIM on Y of the quantized ``output`` (C, H, W) against the uint8 target,
    ``border`` pixels cropped (the SR protocol crops the scale)."""
    out_y = crop_border(y_channel(quantize(output)), border)
    hr_y = crop_border(y_channel(target_u8), border)
    return {"psnr": psnr(out_y, hr_y), "ssim": ssim(out_y, hr_y)}


@torch.no_grad()
def upscale_tiled(predict: Predict, lr: torch.Tensor, scale: int, *, tile: int = 128,
                  overlap: int = 16) -> torch.Tensor:
    """Super-resolve a (1, C, H, W) LR image tile by tile: each ``tile`` x ``tile`` block is
    read with ``overlap`` extra LR pixels on every side and only the block is kept, so with
    an overlap of at least the receptive radius the result equals untiled inference."""
    window = tile + 2 * overlap
    return upscale_windows(predict, lr, scale, window=(window, window), overlap=overlap, zeros=lr.new_zeros)


class SuperResolutionTask:
    """L1 loss for training; PSNR / SSIM on Y over full images for evaluation."""

    primary_metric = "psnr"

    def __init__(self, scale: int, tile: int = 256, overlap: int | None = None) -> None:
        self.scale, self.tile, self.overlap = scale, tile, overlap
        self.border = scale

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(output, target)

    def distill_loss(self, output: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        """L1 to the teacher's image (``temperature`` has no meaning for a regression)."""
        return F.l1_loss(output, teacher)

    @torch.no_grad()
    def evaluate(self, predict: Predict, images: Iterable[tuple[torch.Tensor, np.ndarray]]) -> dict[str, float]:
        """Mean PSNR / SSIM over (input tensor (1, C, h, w) in [0, 1], target uint8 (H, W, C)) pairs."""
        scores = [sr_scores(self.restore(predict, x)[0], target, self.border) for x, target in images]
        if not scores:
            return {"psnr": float("nan"), "ssim": float("nan")}
        return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}

    def restore(self, predict: Predict, lr: torch.Tensor) -> torch.Tensor:
        """The model's output for a whole (1, C, h, w) input, tiled."""
        overlap = self.overlap
        if overlap is None:  # a RepNet knows its radius; any other callable gets a generous default
            net = getattr(predict, "module", predict)  # (DistributedDataParallel wraps the net)
            overlap = receptive_radius(net) if hasattr(net, "spec") else 32
        return upscale_tiled(predict, lr, self.scale, tile=self.tile, overlap=overlap)


@torch.no_grad()
def upscale_image(predict: Predict, rgb: np.ndarray, scale: int, in_channels: int, *, tile: int = 256,
                  overlap: int = 32) -> np.ndarray:
    """Super-resolve an (H, W, 3) uint8 RGB image. A one-channel (Y) model upscales the
    luma; the chroma is upscaled bicubically, as the standard Y protocol assumes."""

    def upscale(planes: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(planes)[None]
        return upscale_tiled(predict, x, scale, tile=tile, overlap=overlap)[0].cpu().numpy()

    return upscale_rgb(upscale, rgb, scale, colour="rgb" if in_channels == 3 else "y")
