"""Shared fixtures: tiny specs, random BN statistics, small IDX datasets written on disk."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from repas.spec import ArchSpec, LayerSpec

# Under pytest-xdist (make test runs two workers on two cores) each worker takes one core.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def tiny_spec(in_channels: int = 3, size: int = 12, num_classes: int = 5) -> ArchSpec:
    """Stem (stride 1), a stride-2 block, two shape-keeping blocks with identity branches."""
    rep = ["conv", "conv1x1", "identity"]
    return ArchSpec(name="tiny", in_channels=in_channels, input_size=(size, size), num_classes=num_classes,
                    layers=[LayerSpec(8, branches=["conv", "conv1x1"]),
                            LayerSpec(12, stride=2, branches=["conv", "conv1x1"]),
                            LayerSpec(12, branches=rep), LayerSpec(12, branches=rep)])


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Random running statistics and affine parameters in every BatchNorm, random scales
    and biases in ECB edge branches (initialised near zero), random PReLU slopes."""
    from repas.reparam.branches import Conv1x1Edge

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.5)
            if isinstance(m, Conv1x1Edge):
                m.scale.copy_(torch.randn(m.scale.shape, generator=gen))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.1)
                m.weight.copy_(torch.randn(n, generator=gen))
                m.bias.copy_(torch.randn(n, generator=gen) * 0.5)


def write_idx(path: Path, array: np.ndarray) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_fake_fashion(root: Path, n_train: int = 256, n_test: int = 128, seed: int = 0) -> Path:
    """Learnable 28x28 IDX data: each class is a bright bar at its own row band."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, y in enumerate(labels):
            images[i, 2 + 2 * y:4 + 2 * y, 4:24] = 255
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture
def fake_fashion(tmp_path: Path) -> Path:
    return write_fake_fashion(tmp_path / "fmnist")


def tiny_method_pipeline(data: Path, run: Path, method: str, compare: list[str], threads: int = 2) -> list[str]:
    """``repas pipeline`` arguments: the Fashion-MNIST config on ``data`` with one epoch a
    training stage, ``method`` searching at 0.5x MACs in float and ``compare`` beside it,
    an ONNX float bundle."""
    return ["pipeline", "--config", "configs/fmnist.yaml", "--data", str(data), "--run-dir", str(run),
            "--epochs", "1", "--threads", str(threads), "--set", "search.pte_latency=null",
            "--set", "search.precision=float", "--set", f"search.method={method}",
            "--set", f"search.compare=[{', '.join(compare)}]",
            "--set", "export.formats=[onnx]", "--set", "export.int8=false", "--set", "export.runs=5",
            "--set", "export.warmup=1", "--set", "train.batch_size=64", "--set", "search.batch_size=64",
            "--set", "finetune.batch_size=64", "--set", "search.target=0.5"]


def method_reports(run: Path, first: str, name: str) -> tuple[Path, dict, dict]:
    """Where method ``name`` of a ``tiny_method_pipeline`` run (``first`` its own method) wrote,
    with its search and extract reports; the search report names the method."""
    import json

    where = run if name == first else run / f"compare-{name}"
    searched = json.loads((where / "search" / "report.json").read_text())
    assert searched["method"] == name
    return where, searched, json.loads((where / "extract" / "report.json").read_text())


def run_to_fuse(tmp: Path) -> tuple[Path, Path]:
    """A tiny run up to the fused net on fake Fashion-MNIST (one epoch a training stage):
    (run directory, data directory)."""
    from repas.cli import main

    data = write_fake_fashion(tmp / "data")
    run = tmp / "run"
    quick = ["--data", data, "--run-dir", run, "--threads", "2", "--set", "train.batch_size=64",
             "--set", "search.batch_size=64", "--set", "finetune.batch_size=64"]
    for stage in ("train", "search", "extract", "finetune", "fuse"):
        epochs = ["--epochs", "1"] if stage in ("train", "search", "finetune") else []
        assert main([stage, *map(str, quick + epochs)]) == 0
    return run, data
