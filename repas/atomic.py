"""Atomic writes: a file is written to a temporary file beside it, fsynced, then renamed;
a directory (a stage's output, a bundle) is written whole in a staging directory beside
it, which then takes its place (``staged_directory``).

A crash, a kill or Ctrl-C mid-write leaves the previous file or directory intact, never a
half-written one. Written files get the mode an ordinary ``open()`` would give them (0666
less the umask), not the 0600 of the temporary file: bundles and images are meant to be
read by others.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process's umask (read by setting it, then setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=float) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    import torch  # here, so that the torch-free runner (repas.deploy.runner) can write files

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def staged_directory(out: str | Path, *, carry: bool = False) -> Iterator[Path]:
    """A fresh directory to write ``out``'s new contents in, which replaces ``out`` when the
    block ends without an error: a stage's output or a bundle is then whole or absent,
    never half old and half new. Every stage and bundle of repas is written through it.

    The directory is made beside ``out`` (the same parent, so that renaming it is atomic).
    With ``carry``, what ``out`` already holds (a training stage's checkpoint and logs) is
    hard-linked into it first (copied where links cannot be made), so that the block
    replaces only the files it writes. When the block succeeds, an existing ``out`` is
    renamed aside, the new directory renamed to ``out``, and the old one deleted. When the
    block raises (Ctrl-C included), or the process is killed, ``out`` is left as it was.
    (Only a crash between the two renames leaves no ``out``: the old one is then
    ``.NAME.*.old`` beside it.) A staging directory left by a killed writer (its name holds
    the writer's process id) is deleted by the next writer of ``out``::

        with staged_directory(run / "export") as staging:
            export_models(model, staging, shape, ["onnx"])
            write_manifest(staging, manifest)
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_staging(out)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    staging, old = (out.with_name(f".{out.name}.{token}.{kind}") for kind in ("new", "old"))
    moved_aside = False
    try:
        if carry and out.is_dir() and not out.is_symlink():
            shutil.copytree(out, staging, symlinks=True, copy_function=_link_or_copy)
        else:
            staging.mkdir()  # (not mkdtemp: its mode 0700 would stay with the output)
        yield staging
        if os.path.lexists(out):
            os.replace(out, old)
            moved_aside = True
        os.replace(staging, out)
    except BaseException:
        if moved_aside and not os.path.lexists(out):
            os.replace(old, out)  # the new directory could not take its place: the old one goes back
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if moved_aside:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def _remove_dead_staging(out: Path) -> None:
    """Delete ``out``'s staging directories whose writer process is gone (killed mid-write);
    a live writer's, or one whose name does not parse, is left alone."""
    for path in out.parent.glob(f".{glob.escape(out.name)}.*-*.new"):
        pid = path.name[len(out.name) + 2:].split("-", 1)[0]
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or no such pid to ask about: not ours to judge
    return True


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link (the carried file is never written in place: every write replaces it by
    rename), or a copy where the file system has none."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
