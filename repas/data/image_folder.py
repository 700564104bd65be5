"""Reader for image folders (``root/<class>/<image>``), decoded once into a uint8 array."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from repas.errors import RepasError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def read_image_folder(root: str | Path, size: tuple[int, int], channels: int = 3,
                      classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images resized to ``size`` (H, W) as (N, C, H, W) uint8, labels, and class names.

    Unreadable files are skipped and listed in one warning; ``classes`` fixes the label
    order (pass the training split's to its test split).
    """
    root = Path(root)
    if not root.is_dir():
        raise RepasError(f"image folder {root} does not exist")
    classes = classes or sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise RepasError(f"{root} has no class sub-folders: expected {root}/<class>/<image>")
    images, labels, bad = [], [], []
    mode = "L" if channels == 1 else "RGB"
    for label, name in enumerate(classes):
        for path in sorted((root / name).glob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as im:
                    im = im.convert(mode).resize((size[1], size[0]), Image.BILINEAR)
                    arr = np.asarray(im, dtype=np.uint8)
            except (OSError, UnidentifiedImageError, ValueError):
                bad.append(str(path))
                continue
            images.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
            labels.append(label)
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s): {', '.join(bad)}", stacklevel=2)
    if not images:
        raise RepasError(f"no readable images under {root}")
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes
