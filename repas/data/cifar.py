"""Readers for CIFAR-10/100 in the python-pickle and the binary layouts."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from repas.errors import RepasError

CIFAR_PICKLE_FILES = {
    10: (["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"], ["test_batch"]),
    100: (["train"], ["test"]),
}
CIFAR_BINARY_FILES = {
    10: (["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
          "data_batch_5.bin"], ["test_batch.bin"]),
    100: (["train.bin"], ["test.bin"]),
}


class _ArraysOnly(pickle.Unpickler):
    """CIFAR pickles hold dicts of bytes, lists and numpy arrays; refuse anything else."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def read_cifar_pickle(path: str | Path, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels from one python-pickle CIFAR batch file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels" if classes == 10 else b"fine_labels"], dtype=np.int64)
    except FileNotFoundError:
        raise RepasError(f"missing data file {path}") from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as e:
        raise RepasError(f"{path} is not a CIFAR-{classes} python batch ({e!r})") from e
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise RepasError(f"{path}: expected N x 3072 images and N labels, got {data.shape} and {len(labels)}")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar_binary(path: str | Path, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from one binary CIFAR batch (1 or 2 label bytes, then 3072 pixels)."""
    path = Path(path)
    if not path.exists():
        raise RepasError(f"missing data file {path}")
    label_bytes = 1 if classes == 10 else 2
    record = label_bytes + 3072
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % record:
        raise RepasError(f"{path} is truncated or not a CIFAR-{classes} binary batch "
                         f"({raw.size} bytes is not a multiple of {record})")
    rows = raw.reshape(-1, record)
    labels = rows[:, label_bytes - 1].astype(np.int64)  # CIFAR-100: [coarse, fine]
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32).copy(), labels


Arrays = tuple[np.ndarray, np.ndarray]


def read_cifar(root: str | Path, classes: int = 10) -> tuple[Arrays, Arrays]:
    """(train, test) from a CIFAR folder in either layout, whichever its files show."""
    root = Path(root)
    if classes not in (10, 100):
        raise RepasError(f"CIFAR has 10 or 100 classes, not {classes}")
    for files, reader in ((CIFAR_PICKLE_FILES[classes], read_cifar_pickle),
                          (CIFAR_BINARY_FILES[classes], read_cifar_binary)):
        train_files, test_files = files
        if all((root / f).exists() for f in train_files + test_files):
            parts = [[reader(root / f, classes) for f in names] for names in (train_files, test_files)]
            return tuple((np.concatenate([p[0] for p in ps]), np.concatenate([p[1] for p in ps]))
                         for ps in parts)  # type: ignore[return-value]
    python_first, binary_first = CIFAR_PICKLE_FILES[classes][0][0], CIFAR_BINARY_FILES[classes][0][0]
    raise RepasError(f"{root} holds no complete CIFAR-{classes} batches: expected "
                     f"{python_first}... (python layout) or {binary_first}... (binary layout)")
