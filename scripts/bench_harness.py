"""What every study script in scripts/ shares, so that each keeps only its rows and its table.

- ``seeds_arg``: a ``--seeds 0,1,2`` option that refuses a repeated seed (two runs of one
  seed would write into the same folders);
- ``RowStore``: the rows JSON, reread on start and rewritten atomically after every row,
  so that a stopped study resumes where it was;
- ``cell``: the "mean ± std" of a table;
- ``header``: the line above a table: date, CPU, library versions and the exact command.

Scripts import it as ``from bench_harness import ...`` (scripts/ is on their path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from repas.atomic import atomic_write_json


def int_list(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2] (an argparse ``type``)."""
    try:
        return [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def seed_list(text: str) -> list[int]:
    """Seeds as ``int_list``, each at most once (an argparse ``type``)."""
    seeds = int_list(text)
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"seed {repeated[0]} is repeated in {text!r}: each seed's runs share "
                                         "its folders, so each seed may appear once")
    if not seeds:
        raise argparse.ArgumentTypeError("no seed given: e.g. --seeds 0,1,2")
    return seeds


def seeds_arg(parser: argparse.ArgumentParser, default: str = "0,1,2") -> None:
    """Add ``--seeds`` (comma-separated, none repeated) to ``parser``."""
    parser.add_argument("--seeds", type=seed_list, default=seed_list(default),
                        help=f"comma-separated seeds, each once (default {default})")


def cell(values: Sequence[float], digits: int = 2, *, count: bool = False, each: bool = False,
         sign: bool = False) -> str:
    """'mean ± std' of ``values`` (std 0 for one value); ``count`` adds '(n)', ``each`` the
    values themselves, ``sign`` a sign on the mean and the values."""
    values = [float(v) for v in values]
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    f = f"+.{digits}f" if sign else f".{digits}f"
    out = f"{statistics.fmean(values):{f}} ± {spread:.{digits}f}"
    if each:
        out += f" ({', '.join(f'{v:{f}}' for v in values)})"
    elif count:
        out += f" ({len(values)})"
    return out


def command(argv: Sequence[str] | None = None) -> str:
    """The command line that ran this script, as a user would type it again."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0])
    shown = f"scripts/{script.name}" if script.parent.name == "scripts" else str(script)
    env = "OMP_WAIT_POLICY=PASSIVE " if os.environ.get("OMP_WAIT_POLICY") == "PASSIVE" else ""
    return f"{env}python {shlex.join([shown, *argv[1:]])}"


def versions() -> dict[str, str]:
    """The versions of the libraries a figure depends on (those installed)."""
    import torch

    out = {"torch": torch.__version__}
    for name in ("onnxruntime", "executorch", "timm"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        out[name] = getattr(module, "__version__", None) or _dist_version(name)
    return out


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def machine() -> str:
    from repas.deploy.latency import cpu_name

    return f"{cpu_name()} ({platform.machine()})"


def header(extra: str = "", argv: Sequence[str] | None = None) -> str:
    """'DATE, CPU, torch X, ...[, extra]. Command: `...`': the line above a study's table."""
    libs = ", ".join(f"{k} {v}" for k, v in versions().items())
    return (f"{time.strftime('%Y-%m-%d %H:%M')}, {machine()}, {libs}{', ' + extra if extra else ''}. "
            f"Command: `{command(argv)}`")


class RowStore:
    """A study's rows in a JSON file (``{"rows": [...], ...}``): read on start (a stopped
    study resumes), written atomically after every row. Other top-level keys (the settings,
    a pool) are kept in ``doc``."""

    def __init__(self, path: str | Path, **defaults: Any) -> None:
        self.path = Path(path)
        loaded = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.doc: dict[str, Any] = {"rows": loaded} if isinstance(loaded, list) else loaded  # (older: a bare list)
        self.doc.setdefault("rows", [])
        for k, v in defaults.items():
            self.doc.setdefault(k, v)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.doc["rows"]

    def find(self, **key: Any) -> dict[str, Any] | None:
        """The first row whose fields equal ``key``."""
        return next((r for r in self.rows if all(r.get(k) == v for k, v in key.items())), None)

    def has(self, **key: Any) -> bool:
        return self.find(**key) is not None

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        """Append ``row`` (stamped with when it finished) and write the file."""
        row.setdefault("finished", time.strftime("%Y-%m-%d %H:%M"))
        self.rows.append(row)
        self.save()
        return row

    def save(self) -> None:
        atomic_write_json(self.path, self.doc)

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        self.save()
