"""Reading a training checkpoint, with errors that say what is wrong with the file."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from repas.errors import RepasError


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
