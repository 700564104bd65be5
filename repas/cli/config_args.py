"""The config a command runs with: YAML (``--config``), or the config recorded by the stage
whose directory it reads, then ``--set`` overrides and the flags' shortcuts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repas.cli.parser import TRAINING
from repas.errors import RepasError
from repas.json_files import read_json

if TYPE_CHECKING:
    from repas.config import PipelineConfig

CONFIG_FILE = "config.json"
# commands that start from data, not from a stage's directory
FROM_DATA = ("data", "train", "pipeline", "profile")
PREVIOUS = {"search": "train", "extract": "search", "finetune": "extract", "fuse": "finetune", "export": "fuse",
            "analyze": "fuse"}
# Config keys that name files or folders: a recorded config may point them only inside its run
# directory (or leave them at their defaults); the user can still give any path on the command line.
PATH_KEYS = ("data.root", "data.test_root", "data.cache_dir", "model.weights", "search.latency_table",
             "search.int8_latency_table")
# Keys that grant trust: they count only in the config the user passes, never in a recorded one.
TRUST_KEYS = ("model.trust_builder", "model.trusted_builders")


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
    elif (Path(run) / "pruned.json").exists() and getattr(args, "source", None) is None:
        pruned = Path(run)  # a user model's RUN/pruned (or RUN/compare-M/pruned): the bundle goes beside it
        args.source, args.run, args.out = run, str(pruned.parent), str(pruned.parent / "export")


def recorded_config(args: argparse.Namespace) -> tuple[dict[str, Any], Path, Path] | None:
    """Without --config, the config recorded in the directory the command reads, the run
    directory it now lies in (a copied run's recorded run_dir is where it was made), and
    the file's path."""
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
    if not path.exists() and (where.parent / "pruned" / "pruned.json").exists():
        path = where.parent / CONFIG_FILE  # a user model's run records its config at its top
    if not path.exists():
        return None
    data = read_json(path, fix="pass the run's config with --config")
    if not isinstance(data, dict):
        raise RepasError(f"{path} is not a config (a JSON object of sections): pass the run's config with --config")
    return data, where.parent, path


def _get(data: dict[str, Any], key: str) -> Any:  # noqa: ANN401
    node: Any = data
    for k in key.split("."):
        node = node.get(k) if isinstance(node, dict) else None
    return node


def confine_recorded(data: dict[str, Any], run: Path, source: Path, given: set[str]) -> dict[str, Any]:
    """A recorded config (``source``) made safe to run with: the keys that grant trust are
    dropped, and each path it names (PATH_KEYS) must lie inside the ``run`` directory or be
    the default, unless the command line gives that key (``given``). A copied run directory
    then cannot make repas read or write elsewhere."""
    import dataclasses

    from repas.config import PipelineConfig

    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for key in TRUST_KEYS:
        section, name = key.split(".")
        if isinstance(data.get(section), dict):
            data[section].pop(name, None)
    defaults = dataclasses.asdict(PipelineConfig())
    inside = run.resolve()
    for key in PATH_KEYS:
        value = _get(data, key)
        if key in given or value is None or value == _get(defaults, key):
            continue
        if not isinstance(value, str):
            raise RepasError(f"{source}: {key} must be a path, got {value!r:.60}; pass the run's config with --config")
        resolved = Path(value).expanduser().resolve()
        if resolved != inside and inside not in resolved.parents:
            flag = f"--data {value}" if key == "data.root" else f"--set {key}={value}"
            raise RepasError(f"{source} sets {key} to {value}, outside the run directory {run}: a recorded config "
                             f"cannot point repas elsewhere; if you mean it, say so yourself ({flag}, or --config "
                             "FILE)")
    return data


def load_args_config(args: argparse.Namespace) -> PipelineConfig:
    from repas.config import load_config

    resolve_directories(args)
    sets = list(args.set)
    values: dict[str, Any] = {}  # flag values go in as they are (a path is not YAML)
    recorded = recorded_config(args)
    for flag, key in (("run_dir", "run_dir"), ("seed", "seed"), ("threads", "threads"), ("data", "data.root")):
        value = getattr(args, flag, None)
        if value is not None:
            values[key] = value
    if getattr(args, "trust_builder", False):
        values["model.trust_builder"] = True
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
    for flag in ("qat", "observer"):
        if getattr(args, flag, None) is not None:
            values[f"export.{flag}"] = getattr(args, flag)
    if getattr(args, "tile", None) is not None:
        values["export.tile"] = _tile(args.tile)
    if getattr(args, "targets", None) is not None:
        values["extract.targets"] = [t.strip() for t in args.targets.split(",") if t.strip()]
    base = None
    if recorded is not None:  # where the directory lies now; --set and the flags still override it
        given = set(values) | {s.split("=", 1)[0].strip() for s in sets if "=" in s}
        data, run, source = recorded
        base = {**confine_recorded(data, run, source, given), "run_dir": str(run)}
    return load_config(args.config, sets, values, base=base)
