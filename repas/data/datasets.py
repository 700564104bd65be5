"""Named datasets: ``load_dataset(name, root)`` gives in-memory train and test splits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from repas.data.cifar import read_cifar
from repas.data.fashion_mnist import IDX_FILES, find_idx_file, locate_fashion_mnist
from repas.data.idx import read_idx
from repas.data.image_folder import read_image_folder
from repas.data.tensors import TensorImages
from repas.errors import RepasError

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "image-folder")


@dataclass
class DatasetSplits:
    train: TensorImages
    test: TensorImages

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]


def _split(images: np.ndarray, labels: np.ndarray, mean, std, classes) -> TensorImages:
    return TensorImages(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64)),
                        tuple(mean), tuple(std), list(classes))


def read_idx_splits(root: Path, classes: list[str], mean: float, std: float) -> DatasetSplits:
    arrays = [read_idx(find_idx_file(root, stem)) for stem in IDX_FILES]
    tr_x, tr_y, te_x, te_y = arrays
    for x, y, which in ((tr_x, tr_y, "train"), (te_x, te_y, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise RepasError(f"{root}: {which} images {x.shape} and labels {y.shape} do not match")
        if y.size and (y.min() < 0 or y.max() >= len(classes)):
            raise RepasError(f"{root}: {which} labels outside 0..{len(classes) - 1}")
    return DatasetSplits(_split(tr_x[:, None], tr_y, [mean], [std], classes),
                         _split(te_x[:, None], te_y, [mean], [std], classes))


def load_dataset(name: str, root: str | Path | None = None, install: bool = False,
                 image_size: tuple[int, int] = (32, 32)) -> DatasetSplits:
    """Train and test splits of a named dataset, held in memory as uint8 tensors."""
    if name == "fashion-mnist":
        return read_idx_splits(locate_fashion_mnist(root, install), FASHION_CLASSES, 0.2860, 0.3530)
    if root is None:
        raise RepasError(f"dataset {name!r} needs --data DIR (only Fashion-MNIST ships in a package here)")
    root = Path(root)
    if name == "mnist":
        if not all(find_idx_file(root, s) for s in IDX_FILES):
            raise RepasError(f"--data {root}: missing MNIST IDX files {list(IDX_FILES)}")
        return read_idx_splits(root, [str(i) for i in range(10)], 0.1307, 0.3081)
    if name in ("cifar10", "cifar100"):
        n = 10 if name == "cifar10" else 100
        (tr_x, tr_y), (te_x, te_y) = read_cifar(root, n)
        mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
        classes = [str(i) for i in range(n)]
        return DatasetSplits(_split(tr_x, tr_y, mean, std, classes), _split(te_x, te_y, mean, std, classes))
    if name == "image-folder":
        tr_x, tr_y, classes = read_image_folder(root / "train", image_size)
        te_x, te_y, _ = read_image_folder(root / "test", image_size, classes=classes)
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        return DatasetSplits(_split(tr_x, tr_y, mean, std, classes), _split(te_x, te_y, mean, std, classes))
    raise RepasError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
