"""BT.601 colour conversions (as MATLAB's rgb2ycbcr / ycbcr2rgb), on arrays in [0, 255].

The standard super-resolution protocol scores the Y channel; data and tasks both use it.
"""

from __future__ import annotations

import numpy as np


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
