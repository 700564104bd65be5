"""The ``repas`` command: each subcommand dispatched to its handler, errors as one line.

Errors print one line (a traceback only with ``--debug``) and exit non-zero; progress goes
through the ``logging`` module, configured here (rank 0 only under torchrun).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from repas.cli.config_args import load_args_config
from repas.cli.info import info, model_dir
from repas.cli.parser import build_parser
from repas.errors import Interrupted, RepasError

_handler: logging.Handler | None = None


class _Format(logging.Formatter):
    """Progress as it is; warnings and errors with their level."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"repas: {record.levelname.lower()}: {text}"


def configure_logging() -> None:
    """repas's loggers print to stdout (progress must reach a log file as it happens); under
    torchrun only rank 0 speaks, the others say only warnings."""
    global _handler
    root = logging.getLogger("repas")
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stdout)
    _handler.setFormatter(_Format("%(message)s"))
    root.addHandler(_handler)
    root.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    root.propagate = False


def _predict(args: argparse.Namespace) -> Path | None:
    from repas.deploy.runner import predict

    print(predict(args.bundle, args.image, output=args.output, fmt=args.format, precision=args.precision,
                  k=args.top, threads=args.threads))
    return None


def _upscale(args: argparse.Namespace) -> Path | None:
    from repas.colour import to_rgb_u8
    from repas.deploy.runner import open_image, save_image
    from repas.sr_geometry import receptive_radius
    from repas.supernet import fuse, load_model
    from repas.tasks.super_resolution import upscale_image

    model = fuse(load_model(model_dir(Path(args.model))).eval())
    if model.spec.task != "super-resolution":
        raise RepasError(f"{args.model} is a {model.spec.task} model, not a super-resolution one")
    rgb, _ = to_rgb_u8(open_image(args.image))
    out = upscale_image(model, rgb, model.spec.scale, model.spec.in_channels, tile=args.tile,
                        overlap=receptive_radius(model))
    save_image(out, args.output)
    print(f"wrote {args.output}: {rgb.shape[1]}x{rgb.shape[0]} -> {out.shape[1]}x{out.shape[0]}")
    return None


def _info(args: argparse.Namespace) -> Path | None:
    info(args.target, trust_builder=args.trust_builder)
    return None


def _methods(args: argparse.Namespace) -> Path | None:
    from repas.search.methods import list_methods, method_class

    for name in list_methods():
        cls = method_class(name)
        print(f"{name:<14} {cls.summary}")
    return None


def _data(args: argparse.Namespace) -> Path | None:
    from repas import stages

    print(stages.get_data(load_args_config(args)).describe())
    return None


def _resume(args: argparse.Namespace) -> bool | str:
    return getattr(args, "resume", None) or False


def _train(args: argparse.Namespace) -> Path | None:
    from repas.stages import train_stage

    return train_stage(load_args_config(args), resume=_resume(args))


def _search(args: argparse.Namespace) -> Path | None:
    from repas.stages import search_stage

    return search_stage(load_args_config(args), args.source, resume=_resume(args))


def _finetune(args: argparse.Namespace) -> Path | None:
    from repas.stages import finetune_stage
    from repas.stages.user_export import pruned_dir

    cfg = load_args_config(args)
    pruned = pruned_dir(cfg, args.source)
    if pruned is not None:  # a user model's run (model.builder): its pruned model, trained further in place
        from repas.stages.user_model import finetune_pruned_stage

        return finetune_pruned_stage(cfg, pruned, resume=_resume(args))
    return finetune_stage(cfg, args.source, resume=_resume(args))


def _profile(args: argparse.Namespace) -> Path | None:
    from repas.stages import profile_stage

    return profile_stage(load_args_config(args), args.output, from_device=args.from_device)


def _extract(args: argparse.Namespace) -> Path | None:
    """One subnet at the search's target (or the flags'), or many with --targets."""
    from repas.stages import extract_stage, targets_stage

    cfg = load_args_config(args)
    if cfg.extract.targets:
        return targets_stage(cfg, cfg.extract.targets, args.source, finetune=args.finetune)
    if args.finetune:
        raise RepasError("--finetune goes with --targets; for one subnet run 'repas finetune' after extract")
    flags = any(getattr(args, f) is not None for f in ("target", "target_macs", "target_params", "target_latency"))
    return extract_stage(cfg, args.source, target_from_search=not flags)


def _fuse(args: argparse.Namespace) -> Path | None:
    from repas.stages import fuse_stage

    return fuse_stage(load_args_config(args), args.source)


def _export(args: argparse.Namespace) -> Path | None:
    from repas.stages import export_stage
    from repas.stages.user_export import export_pruned_stage, pruned_dir

    cfg = load_args_config(args)  # (resolves DIR: a run directory or a model directory)
    pruned = pruned_dir(cfg, args.source)
    if pruned is not None:  # a user model's run (model.builder): its pruned model, rebuilt by its builder
        return export_pruned_stage(cfg, pruned, Path(getattr(args, "out", None) or pruned.parent / "export"))
    return export_stage(cfg, args.source, getattr(args, "out", None))


def _analyze(args: argparse.Namespace) -> Path | None:
    from repas.stages.analyze import analyze_stage

    args.source = args.pruned  # without --config: the config the pruned net's stage recorded
    return analyze_stage(load_args_config(args), args.dense, args.pruned, args.out, args.images)


def _pipeline(args: argparse.Namespace) -> Path | None:
    from repas.stages import run_pipeline

    cfg = load_args_config(args)
    run_pipeline(cfg, resume=_resume(args))
    return Path(cfg.run_dir) / "report.md"


COMMANDS: dict[str, Callable[[argparse.Namespace], Path | None]] = {
    "predict": _predict, "upscale": _upscale, "info": _info, "methods": _methods, "data": _data, "train": _train,
    "search": _search, "profile": _profile, "extract": _extract, "finetune": _finetune, "fuse": _fuse,
    "export": _export, "pipeline": _pipeline, "analyze": _analyze,
}
DISTRIBUTED = ("train", "search", "finetune", "pipeline")


def run(args: argparse.Namespace) -> int:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if args.command not in DISTRIBUTED:
            raise RepasError(f"'repas {args.command}' runs in one process; under torchrun only "
                             f"{', '.join(DISTRIBUTED)} run")
        from repas.distributed import init_distributed

        init_distributed()
    out = COMMANDS[args.command](args)
    if out is not None and ("repas.distributed" not in sys.modules or sys.modules["repas.distributed"].is_main()):
        print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        return run(args)
    except RepasError as e:
        if args.debug:
            raise
        print(f"repas: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an unwritable output directory, a full disk: one line, not a traceback
        if args.debug:
            raise
        where = f" {e.filename}" if e.filename else ""
        print(f"repas: error: cannot use{where}: {e.strerror or e}; choose a directory you can write "
              "(--run-dir) or free some space", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"repas: {e}: rerun the same command with --resume auto to continue", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("repas: interrupted; every checkpoint already written is complete: rerun the same command "
              "with --resume auto to continue", file=sys.stderr)
        return 130
    finally:
        sys.stdout.flush()
        if "repas.distributed" in sys.modules:  # never import torch for 'repas predict'
            sys.modules["repas.distributed"].shutdown()


if __name__ == "__main__":
    sys.exit(main())
