"""Colour conversions: any PIL image to 8-bit RGB, and BT.601 YCbCr (as MATLAB's
rgb2ycbcr / ycbcr2rgb) on arrays in [0, 255]; upscaling an RGB image with a Y or RGB model.

The standard super-resolution protocol scores the Y channel; data, tasks and the deployed
runner all use these (numpy and pillow only: the runner runs without torch).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an (H, W, 3) RGB array in [0, 255]: Y in [16, 235], float64."""
    rgb = rgb.astype(np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def rgb_to_cbcr(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rgb = rgb.astype(np.float64)
    cb = 128.0 + (-37.797 * rgb[..., 0] - 74.203 * rgb[..., 1] + 112.0 * rgb[..., 2]) / 255.0
    cr = 128.0 + (112.0 * rgb[..., 0] - 93.786 * rgb[..., 1] - 18.214 * rgb[..., 2]) / 255.0
    return cb, cr


def ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """Inverse of BT.601 (MATLAB ycbcr2rgb) for arrays in [0, 255]; returns float64 RGB."""
    y, cb, cr = (a.astype(np.float64) - o for a, o in ((y, 16.0), (cb, 128.0), (cr, 128.0)))
    r = 255.0 / 219.0 * y + 255.0 / 224.0 * 1.402 * cr
    g = 255.0 / 219.0 * y - 255.0 / 224.0 * 1.772 * 0.114 / 0.587 * cb - 255.0 / 224.0 * 1.402 * 0.299 / 0.587 * cr
    b = 255.0 / 219.0 * y + 255.0 / 224.0 * 1.772 * cb
    return np.stack([r, g, b], axis=-1)


def to_rgb_u8(im: Image.Image) -> tuple[np.ndarray, str | None]:
    """An (H, W, 3) uint8 array from any PIL image; the second value says what was converted."""
    note = None
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
        note = "16-bit converted to 8-bit"
    if im.mode in ("RGBA", "LA", "P", "PA") or (im.mode == "P" and "transparency" in im.info):
        note = note or f"{im.mode} converted to RGB"
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    if im.mode != "RGB":
        note = note or f"{im.mode} converted to RGB"
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8), note


def upscale_rgb(upscale: Callable[[np.ndarray], np.ndarray], rgb: np.ndarray, scale: int, *,
                colour: str) -> np.ndarray:
    """An (H, W, 3) uint8 image super-resolved to (scale H, scale W, 3) uint8 by a model of
    ``colour`` "rgb" or "y" (any other is taken as "y"). ``upscale`` maps a (C, h, w) float32
    array in [0, 1] to (C, scale h, scale w): the RGB planes for an RGB model; for a Y model
    the BT.601 luma, while the chroma is upscaled bicubically, as the standard Y protocol
    assumes. Training code (PyTorch) and the deployed runner (onnxruntime) both use it."""
    if colour == "rgb":
        sr = upscale(rgb.transpose(2, 0, 1).astype(np.float32) / 255.0)
        return (np.clip(sr, 0, 1) * 255.0).round().astype(np.uint8).transpose(1, 2, 0)
    y = (rgb_to_y(rgb) / 255.0).astype(np.float32)[None]
    y_up = np.clip(upscale(y)[0], 0, 1) * 255.0
    h, w = rgb.shape[:2]
    cb, cr = (np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((w * scale, h * scale),
                                                                                 Image.BICUBIC))
              for c in rgb_to_cbcr(rgb))
    return np.clip(ycbcr_to_rgb(y_up, cb, cr) + 0.5, 0, 255).astype(np.uint8)
