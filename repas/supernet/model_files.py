"""A saved model is a directory: ``spec.json`` + ``weights.safetensors`` (+ ``report.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import safetensors.torch
from safetensors import SafetensorError

from repas.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from repas.errors import RepasError
from repas.spec import ArchSpec
from repas.supernet.net import RepNet, build


def save_model(model: RepNet, directory: str | Path, report: dict[str, Any] | None = None) -> Path:
    """Write spec, weights and (optionally) report atomically; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(directory / "weights.safetensors", safetensors.torch.save(tensors))
    atomic_write_text(directory / "spec.json", model.spec.to_json() + "\n")
    if report is not None:
        atomic_write_json(directory / "report.json", report)
    return directory


def load_model(directory: str | Path) -> RepNet:
    """Rebuild a model from its spec and load its weights; errors name the mismatch."""
    directory = Path(directory)
    spec = ArchSpec.load(directory)
    model = build(spec)
    path = directory / "weights.safetensors"
    if not path.exists():
        raise RepasError(f"no weights at {path}")
    try:
        tensors = safetensors.torch.load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise RepasError(f"{path} is corrupt or truncated ({e})") from e
    load_weights(model, tensors, str(path))
    return model


def load_weights(model: RepNet, tensors: dict, source: str) -> None:
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
        raise RepasError(f"weights {source} do not match spec {model.spec.name!r}: " + "; ".join(parts))
    model.load_state_dict(tensors)
