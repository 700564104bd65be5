"""Reading a training checkpoint, with errors that say what is wrong with the file, and the
checks that a run may resume from it."""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from repas.errors import RepasError

log = logging.getLogger(__name__)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The state saved in ``path``, loaded with ``weights_only=True``: a file holding other
    pickled objects (written by another program, or tampered with) is refused, and said so;
    a damaged file is called damaged."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RepasError(f"--resume: no checkpoint at {path}; run without --resume to start") from None
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():  # a class or function weights_only does not allow
            raise RepasError(f"checkpoint {path} was refused: it holds pickled Python objects besides tensors, so it "
                             "was not written by repas (or was altered), and loading it could run code. Do not "
                             "load it; use a fresh run directory or restore your own checkpoint") from None
        raise RepasError(f"checkpoint {path} is corrupt or truncated ({_first_line(e)}); delete it to start over") \
            from e
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:  # a damaged zip
        raise RepasError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {_first_line(e)}); "
                         "delete it to start over") from e


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def check_same_recipe(state: dict[str, Any], path: Path, now: dict[str, Any]) -> None:
    """A resumed run must train with the recipe its checkpoint was written with (only epochs
    and minutes may change, with a warning: the lr schedule changes with them)."""
    saved = json.loads(state.get("config", "{}"))
    changed = sorted(k for k in now if k not in ("epochs", "checkpoint_every", "minutes") and k in saved
                     and saved[k] != now[k])
    if changed:
        raise RepasError(f"--resume: the training config changed since {path} was written "
                         f"({', '.join(f'{k}: {saved[k]} -> {now[k]}' for k in changed)}); a resumed run "
                         "must use the same recipe (only epochs and minutes may change). Use a fresh run "
                         "directory.")
    for key in ("epochs", "minutes"):
        if saved.get(key, now[key]) != now[key]:
            log.warning(f"resuming with {key} {saved[key]} -> {now[key]}: the lr schedule changes, so the "
                        "result will differ from an uninterrupted run of either length")


def spec_json(model: torch.nn.Module) -> str | None:
    """The network a checkpoint belongs to (a RepNet's spec; None for other modules)."""
    spec = getattr(model, "spec", None)
    return spec.to_json() if hasattr(spec, "to_json") else None


def to_device(value: Any, device: torch.device) -> Any:
    """Tensors in nested dicts / lists moved to ``device`` (a checkpoint loads on the CPU)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value
