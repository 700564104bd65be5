"""Atomic writes: the previous file survives a failed write, and written files follow the
umask like any ordinary file (not the temporary file's 0600)."""

import os
import stat

import pytest
import torch

from repas.atomic import atomic_torch_save, atomic_write_bytes, atomic_write_json
from repas.supernet import build, save_model


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, mask, expected):
    from conftest import tiny_spec

    umask(mask)
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_json(tmp_path / "a.json", {"a": 1})
    atomic_torch_save(tmp_path / "a.pt", {"w": torch.zeros(2)})
    save_model(build(tiny_spec()), tmp_path / "model")
    files = [tmp_path / "a.bin", tmp_path / "a.json", tmp_path / "a.pt", tmp_path / "model" / "spec.json",
             tmp_path / "model" / "weights.safetensors"]
    assert {f.name: mode(f) for f in files} == {f.name: expected for f in files}


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    atomic_write_json(target, {"v": 1})

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(target, {"v": 2})
    assert target.read_text().strip().endswith("}") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
