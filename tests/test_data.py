"""Dataset readers on files the tests write, and on the packaged Fashion-MNIST when present."""

import pickle

import numpy as np
import pytest
import torch
from conftest import write_idx
from PIL import Image

from repas.data import TensorLoader, load_dataset
from repas.data.cifar import read_cifar
from repas.data.fashion_mnist import locate_fashion_mnist
from repas.data.idx import read_idx
from repas.data.image_folder import read_image_folder
from repas.errors import RepasError


def test_idx_roundtrip_gz_and_plain(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.idx.gz", "a.idx"):
        write_idx(tmp_path / name, a)
        assert np.array_equal(read_idx(tmp_path / name), a)


def test_truncated_and_corrupt_idx_give_clear_errors(tmp_path):
    a = np.zeros((10, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "x.idx", a)
    raw = (tmp_path / "x.idx").read_bytes()
    (tmp_path / "short.idx").write_bytes(raw[:-100])
    with pytest.raises(RepasError, match="truncated or corrupt"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "bad.idx").write_bytes(b"\x12\x34" + raw[2:])
    with pytest.raises(RepasError, match="not an IDX file"):
        read_idx(tmp_path / "bad.idx")
    write_idx(tmp_path / "x.idx.gz", a)
    (tmp_path / "cut.idx.gz").write_bytes((tmp_path / "x.idx.gz").read_bytes()[:30])
    with pytest.raises(RepasError, match="corrupt or truncated"):
        read_idx(tmp_path / "cut.idx.gz")
    with pytest.raises(RepasError, match="missing data file"):
        read_idx(tmp_path / "nope.idx")


def test_cifar_pickle_and_binary_layouts(tmp_path):
    rng = np.random.default_rng(0)
    for layout in ("python", "binary"):
        root = tmp_path / layout
        root.mkdir()
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        expect = {}
        for name in names:
            data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, 4)
            expect[name] = (data, labels)
            if layout == "python":
                with open(root / name, "wb") as f:
                    pickle.dump({b"data": data, b"labels": labels.tolist()}, f)
            else:
                rows = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
                rows.tofile(root / f"{name}.bin")
        (tr_x, tr_y), (te_x, te_y) = read_cifar(root, 10)
        assert tr_x.shape == (20, 3, 32, 32) and te_x.shape == (4, 3, 32, 32)
        assert np.array_equal(te_x.reshape(4, -1), expect["test_batch"][0])
        assert np.array_equal(tr_y[:4], expect["data_batch_1"][1])
        splits = load_dataset("cifar10", root)
        assert splits.num_classes == 10 and splits.image_shape == (3, 32, 32)
    (tmp_path / "binary" / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(RepasError, match="truncated"):
        read_cifar(tmp_path / "binary", 10)


def test_image_folder_skips_unreadable_files(tmp_path):
    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (20, 16), colour).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="broken.jpg"):
        x, y, classes = read_image_folder(tmp_path, (8, 8))
    assert classes == ["cat", "dog"] and x.shape == (4, 3, 8, 8) and y.tolist() == [0, 0, 1, 1]
    assert x[0, 0].min() == 255 and x[3, 2].min() == 255


def test_loader_is_deterministic_per_epoch_and_augments(fake_fashion):
    data = load_dataset("fashion-mnist", fake_fashion)
    a = TensorLoader(data.train, 32, shuffle=True, augment=True, seed=3)
    b = TensorLoader(data.train, 32, shuffle=True, augment=True, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.set_epoch(3)
    assert not torch.equal(next(iter(a))[0], next(iter(b))[0])
    plain = TensorLoader(data.train, 256)
    x, _ = next(iter(plain))
    assert x.shape == (256, 1, 28, 28)
    assert abs(float(data.train.normalize(data.train.images).mean())) < 3


def test_missing_fashion_mnist_names_data_flag(tmp_path):
    with pytest.raises(RepasError, match="missing Fashion-MNIST files"):
        locate_fashion_mnist(tmp_path)


def test_packaged_fashion_mnist():
    try:
        root = locate_fashion_mnist()
    except RepasError:
        pytest.skip("Debian package dataset-fashion-mnist is not installed (make test installs it as root)")
    data = load_dataset("fashion-mnist", root)
    assert len(data.train) == 60000 and len(data.test) == 10000
    assert data.image_shape == (1, 28, 28)
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
