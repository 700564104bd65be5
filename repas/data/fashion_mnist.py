"""Where Fashion-MNIST lives here: the Debian package ``dataset-fashion-mnist``."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from repas.errors import RepasError

log = logging.getLogger(__name__)

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def find_idx_file(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).exists():
            return root / name
    return None


def has_idx_files(root: Path) -> bool:
    return all(find_idx_file(root, stem) for stem in IDX_FILES)


def _package_dir() -> Path | None:
    """The package's folder as dpkg lists it (falls back to the usual path)."""
    if shutil.which("dpkg"):
        out = subprocess.run(["dpkg", "-L", DEBIAN_PACKAGE], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            if line.endswith("train-images-idx3-ubyte.gz"):
                return Path(line).parent
    return DEBIAN_DIR if has_idx_files(DEBIAN_DIR) else None


def locate_fashion_mnist(root: str | Path | None = None, install: bool = False) -> Path:
    """The folder holding the four IDX files: ``root`` if given, else the Debian package's,
    installing the package first when ``install`` and apt-get can (as root)."""
    if root is not None:
        root = Path(root)
        if not has_idx_files(root):
            missing = [s for s in IDX_FILES if not find_idx_file(root, s)]
            raise RepasError(f"--data {root}: missing Fashion-MNIST files {missing} (.gz or plain)")
        return root
    found = _package_dir()
    if found and has_idx_files(found):
        return found
    if install and shutil.which("apt-get") and os.geteuid() == 0:
        log.info(f"installing Debian package {DEBIAN_PACKAGE} ...")
        cmd = ["apt-get", "install", "-y", "-q", DEBIAN_PACKAGE]
        if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL)
            subprocess.run(cmd, stdout=subprocess.DEVNULL)
        found = _package_dir()
        if found and has_idx_files(found):
            return found
    raise RepasError(
        f"Fashion-MNIST not found. Install it with 'apt-get install {DEBIAN_PACKAGE}' "
        "(run 'repas data' as root to do so), or point repas at a folder holding "
        "train-images-idx3-ubyte.gz etc. with --data DIR")
