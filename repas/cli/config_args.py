"""The config a command runs with: YAML (``--config``), or the config recorded by the stage
whose directory it reads, then ``--set`` overrides and the flags' shortcuts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repas.cli.parser import TRAINING
from repas.errors import RepasError

if TYPE_CHECKING:
    from repas.config import PipelineConfig

CONFIG_FILE = "config.json"
# commands that start from data, not from a stage's directory
FROM_DATA = ("data", "train", "pipeline", "profile")
PREVIOUS = {"search": "train", "extract": "search", "finetune": "extract", "fuse": "finetune", "export": "fuse"}


def _tile(text: str) -> list[int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise RepasError(f"--tile {text!r}: expected HEIGHTxWIDTH, e.g. 128x128") from None
    return [h, w]


def resolve_directories(args: argparse.Namespace) -> None:
    """``repas export DIR``: DIR is a run directory, or a model directory (it has a
    spec.json) whose bundle goes beside it, in DIR/../export."""
    run = getattr(args, "run", None)
    if run is None:
        return
    if args.run_dir is not None and args.run_dir != run:
        raise RepasError(f"two run directories given: {run} and --run-dir {args.run_dir}")
    if (Path(run) / "spec.json").exists() and getattr(args, "source", None) is None:
        model = Path(run)
        args.source, args.run = run, str(model.parent)
        # RUN/fuse -> RUN/export; any other model directory gets a bundle of its own beside it
        # (RUN/dense-fuse -> RUN/dense-export), never replacing the run's searched bundle
        name = "export" if model.name == "fuse" else model.name.replace("fuse", "export") \
            if "fuse" in model.name else f"{model.name}-export"
        args.out = str(model.parent / name)


def recorded_config(args: argparse.Namespace) -> tuple[dict[str, Any], Path] | None:
    """Without --config, the config recorded in the directory the command reads, and the
    run directory it now lies in (a copied run's recorded run_dir is where it was made)."""
    if args.config is not None or args.command not in PREVIOUS:
        return None
    source = getattr(args, "source", None)
    if source is not None:
        where = Path(source)
    else:
        set_run = [s.split("=", 1)[1] for s in args.set if s.strip().startswith("run_dir=")]
        run = Path(getattr(args, "run", None) or args.run_dir or (set_run[-1] if set_run else "runs/fmnist"))
        where = run / PREVIOUS[args.command]
    path = where / CONFIG_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RepasError(f"{path} cannot be read ({e}): pass the run's config with --config") from None
    return data, where.parent


def load_args_config(args: argparse.Namespace) -> PipelineConfig:
    from repas.config import load_config

    resolve_directories(args)
    sets = list(args.set)
    values: dict[str, Any] = {}  # flag values go in as they are (a path is not YAML)
    recorded = recorded_config(args)
    base = None
    if recorded is not None:  # where the directory lies now; --set and the flags still override it
        base = {**recorded[0], "run_dir": str(recorded[1])}
    for flag, key in (("run_dir", "run_dir"), ("seed", "seed"), ("threads", "threads"), ("data", "data.root")):
        value = getattr(args, flag, None)
        if value is not None:
            values[key] = value
    stages = TRAINING if args.command == "pipeline" else ("finetune",) if args.command == "extract" else (
        args.command,)
    for flag in ("epochs", "minutes"):
        if getattr(args, flag, None) is not None:
            sets += [f"{s}.{flag}={getattr(args, flag)}" for s in stages]
    if getattr(args, "target", None) is not None:
        sets += [f"search.target={args.target}", "search.target_abs=null"]
    for metric in ("macs", "params", "latency"):
        value = getattr(args, f"target_{metric}", None)
        if value is not None:
            sets.append(f"search.metric={metric}")
            values["search.target_abs"] = value
    for flag, key in (("latency_table", "search.latency_table"), ("method", "search.method"),
                      ("max_drop", "search.max_drop"), ("backend", "profile.backend"),
                      ("divisor", "profile.divisor"), ("round_to", "extract.round_to"),
                      ("allocation", "extract.allocation")):
        value = getattr(args, flag, None)
        if value is not None:
            values[key] = value
    if getattr(args, "run", None) is not None:
        values["run_dir"] = args.run
    if getattr(args, "format", None) is not None:
        values["export.formats"] = [f.strip() for f in args.format.split(",") if f.strip()]
    if getattr(args, "int8", None) is not None:
        values["export.int8"] = args.int8
    if getattr(args, "tile", None) is not None:
        values["export.tile"] = _tile(args.tile)
    if getattr(args, "targets", None) is not None:
        values["extract.targets"] = [t.strip() for t in args.targets.split(",") if t.strip()]
    return load_config(args.config, sets, values, base=base)
