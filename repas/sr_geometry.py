"""Super-resolution geometry shared by the training code and the torch-free runner
(``repas predict``): the global residual's weights, the receptive radius of a net, and the
overlapping tiles that make tiled inference equal one whole-image call.

numpy only, and no repas module but ``errors``, so that every layer may import it: the
supernet (its residual), deploy (micro-models, the runner), tasks and the data adapters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from repas.errors import RepasError

Array = Any  # a numpy array or a torch tensor: tiling only slices and assigns


def residual_weight(channels: int, scale: int) -> np.ndarray:
    """A fixed 1x1 conv (float32, ``(channels * scale^2, channels, 1, 1)``) that repeats each
    input channel scale^2 times: before PixelShuffle it is nearest-neighbour upsampling,
    written as a conv because XNNPACK delegates convs but not ``Tensor.repeat``."""
    r = scale * scale
    weight = np.zeros((channels * r, channels, 1, 1), np.float32)
    for c in range(channels):
        weight[c * r:(c + 1) * r, c] = 1.0
    return weight


def receptive_radius(net: Any) -> int:  # noqa: ANN401 (an ArchSpec, or a model carrying one)
    """How many LR pixels away an output pixel can see: the sum over layers of
    ``dilation * (kernel // 2)``. ``net`` is an ArchSpec or a model with a ``spec`` (every
    RepNet, fused or not: a block's branches all fit in its kernel, so they are not summed)."""
    spec = getattr(net, "spec", net)
    return sum(lay.dilation * (lay.kernel // 2) for lay in spec.layers)


def tile_windows(size: int, window: int, overlap: int) -> list[tuple[int, int, int]]:
    """(window start, first kept, last kept + 1) along one axis of ``size`` pixels, for
    windows of ``min(window, size)`` pixels. A kept pixel lies at least ``overlap`` pixels
    from its window's edges unless that edge is the image's, so with an overlap of at least
    the receptive radius the result equals one whole-image call."""
    if size <= window:
        return [(0, 0, size)]
    step = window - 2 * overlap
    if step < 1:
        raise RepasError(f"tile {window} is too small for an overlap of {overlap} pixels: use a larger tile")
    out, start, kept = [], 0, 0
    while True:
        start = min(start, size - window)  # the last window is moved back inside the image
        end = start + window
        keep_from = max(kept, start + overlap) if start else 0  # each pixel kept once
        keep_to = size if end >= size else end - overlap
        out.append((start, keep_from, keep_to))
        kept = keep_to
        if end >= size:
            return out
        start += step


def upscale_tiled(run: Callable[[Array], Array], lr: Array, scale: int, *, window: tuple[int, int], overlap: int,
                  zeros: Callable[[tuple[int, ...]], Array]) -> Array:
    """Super-resolve an (N, C, H, W) array window by window (``tile_windows`` on each axis),
    keeping each window's centre; one call when the image fits in one window. ``zeros(shape)``
    makes the output array (numpy or torch, as ``run`` returns)."""
    _, c, h, w = lr.shape
    rows, cols = tile_windows(h, window[0], overlap), tile_windows(w, window[1], overlap)
    if len(rows) == len(cols) == 1:
        return run(lr)
    wh, ww = min(window[0], h), min(window[1], w)
    out = zeros((lr.shape[0], c, h * scale, w * scale))
    for ys, y0, y1 in rows:
        for xs, x0, x1 in cols:
            sr = run(lr[:, :, ys:ys + wh, xs:xs + ww])
            out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
                sr[:, :, (y0 - ys) * scale:(y1 - ys) * scale, (x0 - xs) * scale:(x1 - xs) * scale]
    return out
