"""Super-resolution data: HR photos -> (HR, LR) pairs, decoded once, cached, patched.

Default sets use real photographs that ship in Debian packages (TRAIN, TEST) and small
colour photos inside scikit-image / scikit-learn (Set7-pkg). HR is the photo downscaled
by ``hr_downscale`` (2 for the JPEG wallpapers: it washes out compression artefacts) with
antialiasing, cropped to a multiple of the scale; LR is the bicubic downscale of HR.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import subprocess
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from repas.atomic import atomic_write_bytes
from repas.colour import rgb_to_y, to_rgb_u8
from repas.errors import RepasError
from repas.spec import SR_SCALES

log = logging.getLogger(__name__)

SR_PACKAGES = ("lomiri-wallpapers-16.04", "mate-backgrounds", "plasma-workspace-wallpapers",
               "lomiri-wallpapers-20.04")
PLASMA_PHOTOS = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
                 "Kite", "OneStandsOut", "Path", "summer_1am")
TEST_NAMES = ("Dragonfly", "Bridge", "seeding", "Kleiber", "LadyBird", "Wood", "EveningGlow", "Path")
TEST_CROP = (768, 1024)  # central crop of at most H x W of the HR test images
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def check_scale(scale: int) -> int:
    if scale not in SR_SCALES:
        raise RepasError(f"super-resolution scale must be one of {SR_SCALES}, got {scale}")
    return scale


# ---- where the photos are ------------------------------------------------------------
def _package_files(package: str) -> list[Path]:
    if not shutil.which("dpkg"):
        return []
    out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
    return [Path(line) for line in out.stdout.splitlines() if line.lower().endswith((".jpg", ".jpeg"))]


def _is_photo(package: str, path: Path) -> bool:
    if package == "lomiri-wallpapers-16.04":
        return "_by_" in path.name and "umang" not in path.name
    if package == "mate-backgrounds":
        return path.parent.name == "nature"
    if package == "plasma-workspace-wallpapers":
        return path.name == "2560x1600.jpg" and path.parts[-4] in PLASMA_PHOTOS and path.parent.name == "images"
    if package == "lomiri-wallpapers-20.04":
        return path.name.startswith("Kleiber")
    return False


def photo_name(path: Path) -> str:
    return path.parts[-4] if path.name == "2560x1600.jpg" else path.stem


def packaged_photos(install: bool = False) -> list[Path]:
    """The 38 photographs in the wallpaper packages (installing them first if asked and possible)."""
    photos = [p for pkg in SR_PACKAGES for p in _package_files(pkg) if _is_photo(pkg, p) and p.exists()]
    if not photos and install and shutil.which("apt-get"):
        log.info(f"installing Debian packages {' '.join(SR_PACKAGES)} ...")
        cmd = ["apt-get", "install", "-y", "-q", *SR_PACKAGES]
        if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL)
            subprocess.run(cmd, stdout=subprocess.DEVNULL)
        photos = [p for pkg in SR_PACKAGES for p in _package_files(pkg) if _is_photo(pkg, p) and p.exists()]
    if not photos:
        raise RepasError("no SR photos found: install the Debian packages " + " ".join(SR_PACKAGES)
                         + " (run 'repas data --set data.name=sr-photos' as root), or train on a folder of HR "
                         "images with --set data.name=sr-folder --data DIR")
    return sorted(photos, key=photo_name)


def split_packaged(photos: list[Path]) -> tuple[list[Path], list[Path]]:
    """(TRAIN, TEST): TEST is every photo whose name contains one of TEST_NAMES."""
    test = [p for p in photos if any(t in photo_name(p) for t in TEST_NAMES)]
    return [p for p in photos if p not in test], test


def set7_pkg() -> list[tuple[str, np.ndarray]]:
    """Seven small colour photos that ship inside scikit-image and scikit-learn."""
    try:
        from skimage import data as skdata
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise RepasError("Set7-pkg needs scikit-image and scikit-learn: pip install 'repas[sr]'") from None
    images = [(name, getattr(skdata, name)()) for name in ("astronaut", "coffee", "chelsea", "rocket")]
    images.append(("stereo_motorcycle", skdata.stereo_motorcycle()[0]))
    sk = load_sample_images()
    images += [(Path(f).stem, im) for f, im in zip(sk.filenames, sk.images)]
    return images


def image_files(root: str | Path) -> list[Path]:
    """HR images of a folder; in a DIV2K-style layout, those of its ``*_HR`` folder."""
    root = Path(root)
    if not root.is_dir():
        raise RepasError(f"image folder {root} does not exist")
    hr_dirs = sorted(d for d in root.iterdir() if d.is_dir() and d.name.endswith("_HR"))
    base = hr_dirs[0] if hr_dirs else root
    files = sorted(p for p in base.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise RepasError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {base}")
    return files


# ---- decoding -------------------------------------------------------------------------
def make_pair(rgb: np.ndarray, scale: int, hr_downscale: int = 1,
              crop: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(HR, LR) uint8 arrays: optional antialiased downscale, central crop, bicubic LR
    (at scale 1, for denoising, LR is the HR array itself)."""
    im = Image.fromarray(rgb)
    if hr_downscale > 1:
        im = im.resize((im.width // hr_downscale, im.height // hr_downscale), Image.BICUBIC, reducing_gap=None)
    w, h = im.size
    if crop is not None:
        ch, cw = min(crop[0], h), min(crop[1], w)
        top, left = (h - ch) // 2, (w - cw) // 2
        im = im.crop((left, top, left + cw, top + ch))
        w, h = im.size
    w, h = w - w % scale, h - h % scale
    im = im.crop((0, 0, w, h))
    hr = np.asarray(im, dtype=np.uint8)
    if scale == 1:
        return hr, hr
    return hr, np.asarray(im.resize((w // scale, h // scale), Image.BICUBIC), dtype=np.uint8)


@dataclass
class SRPair:
    name: str
    hr: np.ndarray  # (H, W, 3) uint8
    lr: np.ndarray  # (H / s, W / s, 3) uint8


def load_pairs(sources: list[Path] | list[tuple[str, np.ndarray]], scale: int, hr_downscale: int = 1,
               crop: tuple[int, int] | None = None, min_lr: int = 0, cache_dir: str | Path | None = None,
               ) -> list[SRPair]:
    """Decode every source once into (HR, LR) pairs (cached as .npz when ``cache_dir``).

    Unreadable files and images whose LR side would be under ``min_lr`` pixels are skipped
    and listed in one warning; converted modes (grey, RGBA, palette, 16-bit) are listed too.
    """
    if scale != 1:  # 1: clean images for denoising
        check_scale(scale)
    pairs, skipped, converted = [], [], []
    for src in sources:
        name, rgb, path = (src[0], src[1], None) if isinstance(src, tuple) else (photo_name(src), None, src)
        cached = None
        if cache_dir is not None and path is not None:
            key = hashlib.sha1(f"{path.resolve()}|{path.stat().st_mtime}|{scale}|{hr_downscale}|{crop}".encode())
            cached = Path(cache_dir) / f"{name}-{key.hexdigest()[:12]}.npz"
            hr = lr = None
            if cached.exists():
                try:  # (allow_pickle stays off: a cache file cannot run code)
                    with np.load(cached) as z:
                        hr, lr = z["hr"], z["lr"]
                except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                    hr = lr = None  # a damaged cache entry is decoded again and replaced
            if lr is not None:
                if min(lr.shape[:2]) < max(min_lr, 1):
                    skipped.append(f"{path} (LR {lr.shape[1]}x{lr.shape[0]} is smaller than a {min_lr}-pixel patch)")
                else:
                    pairs.append(SRPair(name, hr, lr))
                continue
        if rgb is None:
            try:
                with Image.open(path) as im:
                    im.load()
                    rgb, note = to_rgb_u8(im)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
                skipped.append(f"{path} (unreadable: {type(e).__name__})")
                continue
            if note:
                converted.append(f"{path} ({note})")
        elif rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=-1)
        hr, lr = make_pair(rgb[..., :3], scale, hr_downscale, crop)
        if min(lr.shape[:2]) < max(min_lr, 1):
            skipped.append(f"{path or name} (LR {lr.shape[1]}x{lr.shape[0]} is smaller than a {min_lr}-pixel patch)")
            continue
        if cached is not None:  # a unique temporary name: two torchrun processes may write the same entry
            buf = io.BytesIO()
            np.savez(buf, hr=hr, lr=lr)
            atomic_write_bytes(cached, buf.getvalue())
        pairs.append(SRPair(name, hr, lr))
    if converted:
        warnings.warn(f"converted {len(converted)} image(s): {'; '.join(converted)}", stacklevel=2)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} image(s): {'; '.join(skipped)}", stacklevel=2)
    if not pairs:
        raise RepasError(f"no usable image left for super-resolution (skipped: {'; '.join(skipped) or 'none'})")
    return pairs


# ---- tensors for training and evaluation -------------------------------------------------
def to_model_input(rgb_u8: np.ndarray, colour: str) -> torch.Tensor:
    """(1, C, H, W) float in [0, 1]: the Y channel (BT.601, [16, 235] / 255) or RGB."""
    if colour == "y":
        return torch.from_numpy(rgb_to_y(rgb_u8) / 255.0).float()[None, None]
    return torch.from_numpy(rgb_u8).permute(2, 0, 1).float()[None] / 255.0


def eval_images(pairs: list[SRPair], colour: str) -> list[tuple[torch.Tensor, np.ndarray]]:
    """(LR input, HR uint8 target) for the task's evaluation; Y targets are kept as RGB (the
    metric takes their Y)."""
    return [(to_model_input(p.lr, colour), p.hr) for p in pairs]


class PatchLoader:
    """Random (LR, HR) patch batches with flips and 90-degree rotations, from pairs held in
    memory; epoch e's patches depend only on (seed, e), so a resumed run sees the same data."""

    def __init__(self, pairs: list[SRPair], scale: int, colour: str = "y", patch: int = 32, batch_size: int = 16,
                 batches_per_epoch: int = 200, seed: int = 0) -> None:
        if colour not in ("y", "rgb"):
            raise RepasError(f"colour mode must be 'y' or 'rgb', got {colour!r}")
        small = [p.name for p in pairs if min(p.lr.shape[:2]) < patch]
        if small:
            raise RepasError(f"images smaller than a {patch}-pixel LR patch: {small}")
        self.scale, self.patch, self.batch_size = scale, patch, batch_size
        self.batches_per_epoch, self.seed, self.epoch = batches_per_epoch, seed, 0
        self.rank, self.world = 0, 1
        self.lr = [to_model_input(p.lr, colour)[0] for p in pairs]
        self.hr = [to_model_input(p.hr, colour)[0] for p in pairs]
        sizes = torch.tensor([x.shape[1] * x.shape[2] for x in self.lr], dtype=torch.float64)
        self.weights = sizes / sizes.sum()  # every LR pixel equally likely

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, rank: int, world: int) -> None:
        """Yield only this process's slice of every (global) batch; the random draws of the
        whole batch are made on every process, so the patches are those of one process."""
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        p, s = self.patch, self.scale
        for _ in range(self.batches_per_epoch):
            which = torch.multinomial(self.weights, self.batch_size, replacement=True, generator=gen)
            lrs, hrs = [], []
            part = self.batch_size // self.world
            for k, i in enumerate(which.tolist()):
                lr, hr = self.lr[i], self.hr[i]
                y = int(torch.randint(0, lr.shape[1] - p + 1, (1,), generator=gen))
                x = int(torch.randint(0, lr.shape[2] - p + 1, (1,), generator=gen))
                flip, rot = torch.randint(0, 2, (1,), generator=gen), int(torch.randint(0, 4, (1,), generator=gen))
                if self.world > 1 and not self.rank * part <= k < (self.rank + 1) * part:
                    continue
                a, b = lr[:, y:y + p, x:x + p], hr[:, y * s:(y + p) * s, x * s:(x + p) * s]
                if flip:
                    a, b = a.flip(-1), b.flip(-1)
                lrs.append(torch.rot90(a, rot, (1, 2)))
                hrs.append(torch.rot90(b, rot, (1, 2)))
            yield torch.stack(lrs), torch.stack(hrs)
