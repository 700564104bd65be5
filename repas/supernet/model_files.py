"""A saved model is a directory: ``spec.json`` + ``weights.safetensors`` (+ ``report.json``)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import safetensors.torch
from safetensors import SafetensorError
from torch import nn

from repas.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, staged_directory
from repas.errors import RepasError
from repas.spec import ArchSpec
from repas.supernet.net import RepNet, build


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s state dict to ``path`` as safetensors, atomically (any module)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(Path(path), safetensors.torch.save(tensors))
    return Path(path)


def read_weights(path: str | Path) -> dict:
    """The tensors of a safetensors file; a missing or damaged file is a RepasError."""
    path = Path(path)
    if not path.exists():
        raise RepasError(f"no weights at {path}")
    try:
        return safetensors.torch.load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise RepasError(f"{path} is corrupt or truncated ({e})") from e


def save_model(model: RepNet, directory: str | Path, report: dict[str, Any] | None = None) -> Path:
    """Write spec, weights and (optionally) report as one atomic step (``staged_directory``:
    a kill mid-write leaves the directory as it was; other files in it are kept); returns
    the directory."""
    directory = Path(directory)
    with staged_directory(directory, carry=True) as staging:
        write_model_files(model, staging, report)
    return directory


def write_model_files(model: RepNet, directory: Path, report: dict[str, Any] | None = None) -> None:
    """spec.json, weights.safetensors and (optionally) report.json into ``directory``."""
    save_weights(model, directory / "weights.safetensors")
    atomic_write_text(directory / "spec.json", model.spec.to_json() + "\n")
    if report is not None:
        atomic_write_json(directory / "report.json", report)


def load_model(directory: str | Path) -> RepNet:
    """Rebuild a model from its spec and load its weights; errors name the mismatch."""
    directory = Path(directory)
    spec = ArchSpec.load(directory)
    model = build(spec)
    path = directory / "weights.safetensors"
    load_weights(model, read_weights(path), str(path))
    return model


def load_weights(model: nn.Module, tensors: dict, source: str) -> None:
    """Load ``tensors`` into ``model``; every missing, unexpected or misshapen tensor is named."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{k}: file {tuple(tensors[k].shape)} vs spec {tuple(v.shape)}"
             for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        if wrong:
            parts.append(f"wrong shapes {wrong[:3]}{' ...' if len(wrong) > 3 else ''}")
        spec = getattr(model, "spec", None)
        what = f"spec {spec.name!r}" if spec is not None else type(model).__name__
        raise RepasError(f"weights {source} do not match {what}: " + "; ".join(parts))
    state = OrderedDict(tensors)  # with the model's own per-module versions, which some modules require (MNASNet)
    state._metadata = getattr(expected, "_metadata", None)
    model.load_state_dict(state)
