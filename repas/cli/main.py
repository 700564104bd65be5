"""The ``repas`` command: one subcommand per pipeline stage, plus pipeline, data and info.

Every subcommand reads a YAML config (``--config``, default: built-in defaults) with
``--set section.key=value`` overrides and a few shortcuts (``--target``, ``--target-macs``,
``--epochs``, ``--data``). Errors print one line (a traceback only with ``--debug``) and
exit non-zero.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from repas.errors import Interrupted, RepasError

if TYPE_CHECKING:
    from repas.config import PipelineConfig

TRAINING = ("train", "search", "finetune")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="repas", description="Pruning-as-Search with structural reparameterization")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, source: bool = False) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--config", help="YAML config (default: built-in defaults)")
        sp.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set search.alpha=2 (repeatable)")
        sp.add_argument("--run-dir", help="where stages write (config: run_dir)")
        sp.add_argument("--seed", type=int)
        sp.add_argument("--threads", type=int, help="torch intra-op threads")
        sp.add_argument("--data", metavar="DIR", help="folder of the dataset's files (config: data.root)")
        sp.add_argument("--debug", action="store_true", help="show tracebacks")
        if source:
            sp.add_argument("--from", dest="source", metavar="DIR", help="input model directory "
                            "(default: the previous stage's directory in the run directory)")
        return sp

    add("data", "obtain the dataset (installs Fashion-MNIST's Debian package when possible)")
    for name, help_ in (("train", "train the dense supernet"), ("search", "search layer widths under a budget"),
                        ("finetune", "fine-tune the extracted subnet"), ("pipeline", "run every stage")):
        sp = add(name, help_, source=name in ("search", "finetune"))
        sp.add_argument("--epochs", type=int, help="epochs of this stage (pipeline: of every training stage)")
        sp.add_argument("--resume", nargs="?", const=True, choices=("auto",),
                        help="continue from the stage's checkpoint.pt; '--resume auto' continues where a run "
                        "stopped: complete stages are skipped, a stage with a checkpoint resumes (mid-epoch "
                        "too), the others start")
        if name in ("search", "pipeline"):
            _budget_args(sp)
            sp.add_argument("--method", help="how widths are chosen: pas (default) or a baseline pruning method "
                            "for comparisons at the same budget: uniform, l1, l1-layer, slimming, oicsr, admm, "
                            "correlation, lasso, torch-pruning")
            sp.add_argument("--max-drop", type=float, metavar="D",
                            help="error-tolerance mode instead of a budget: the smallest net whose validation "
                            "top-1 (points) or PSNR (dB) is at most D below the dense net's (holds out "
                            "data.val_fraction of the training data, 0.1 by default)")
    sp = add("extract", "cut the searched subnet out of the supernet", source=True)
    _budget_args(sp)
    sp.add_argument("--round-to", type=int, help="round widths to a multiple (e.g. 8)")
    sp.add_argument("--targets", metavar="T1,T2,...", help="many subnets from one search, e.g. 1ms,2ms,3ms "
                    "(latency) or 2M,3M (in search.metric): written to RUN_DIR/targets/<target>/")
    sp.add_argument("--allocation", choices=("ranked", "threshold"),
                    help="with --targets: widths by importance per unit of cost (ranked, default) or one global "
                    "threshold on the gate scores")
    sp.add_argument("--finetune", action="store_true",
                    help="with --targets: also fine-tune, fuse and export each subnet and measure its latency")
    sp.add_argument("--epochs", type=int, help="with --finetune: fine-tuning epochs")
    sp = add("profile", "measure a latency table of the space's layer shapes on this machine")
    sp.add_argument("--backend", choices=("onnxruntime", "torch", "executorch"),
                    help="runtime to time (config: profile.backend; default onnxruntime)")
    sp.add_argument("--divisor", type=_positive, help="channel counts measured: multiples of this (default 4)")
    sp.add_argument("-o", "--output", metavar="FILE",
                    help="table to write (default: search.latency_table, else RUN_DIR/latency.csv)")
    sp.add_argument("--from-device", metavar="DIR", help="build the table from micro-models timed on another "
                    "device (scripts/export_micro_models.py, then scripts/time_micro_models.py there)")
    add("fuse", "fuse every multi-branch block into one conv", source=True)
    sp = add("export", "the deployment bundle: .onnx / .pte (float and int8), each checked, scored and timed",
             source=True)
    sp.add_argument("run", nargs="?", metavar="RUN_DIR", help="the run directory (same as --run-dir)")
    sp.add_argument("--format", metavar="FMT[,FMT]", help="onnx, pte or onnx,pte (config: export.formats; "
                    "default onnx, plus pte where ExecuTorch is installed)")
    sp.add_argument("--int8", action=argparse.BooleanOptionalAction, default=None,
                    help="also int8 models, calibrated on training inputs (config: export.int8; default on)")
    sp.add_argument("--tile", metavar="HxW", help="SR: the static LR input of the exported files, e.g. 128x128 "
                    "(config: export.tile; default the spec's input size)")
    sp = sub.add_parser("predict", help="run an exported bundle on an image (needs only onnxruntime, numpy, "
                        "pillow)", description="run an exported bundle on an image: the top-5 labels of a "
                        "classifier, or the upscaled image of an SR model; needs only onnxruntime, numpy and "
                        "pillow (or ExecuTorch for --format pte)")
    sp.add_argument("bundle", help="a bundle directory (RUN_DIR/export, with model.json)")
    sp.add_argument("image", help="input image (PNG, JPEG, ...)")
    sp.add_argument("-o", "--output", help="SR: output image path")
    sp.add_argument("--format", choices=("onnx", "pte"), default="onnx", help="which model file to run")
    sp.add_argument("--precision", choices=("float", "int8"), default="float")
    sp.add_argument("-k", "--top", type=_positive, default=5, help="classification: labels shown")
    sp.add_argument("--threads", type=_positive, default=1, help="runtime threads (onnxruntime)")
    sp.add_argument("--debug", action="store_true")
    sp = sub.add_parser("upscale", help="super-resolve an image with a trained SR model",
                        description="super-resolve an image with a trained SR model (tiled, any size)")
    sp.add_argument("image", help="input image (PNG, JPEG, ...)")
    sp.add_argument("--model", required=True, metavar="DIR",
                    help="a model directory (spec.json + weights.safetensors) or a run directory")
    sp.add_argument("-o", "--output", required=True, help="output image path")
    sp.add_argument("--tile", type=_positive, default=256, help="LR tile side (memory bound; the result is the same)")
    sp.add_argument("--debug", action="store_true")
    sp = sub.add_parser("info", help="per-layer widths, MACs and params of a spec",
                        description="per-layer widths, MACs and params of a spec")
    sp.add_argument("target", help="a search space name, a spec.json, or a model directory")
    sp.add_argument("--debug", action="store_true")
    return p


def _budget_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--target", type=float, help="budget as a fraction of the dense cost, e.g. 0.5")
    sp.add_argument("--target-macs", metavar="N", help="absolute MACs budget, e.g. 2.5M")
    sp.add_argument("--target-params", metavar="N", help="absolute parameter budget, e.g. 40K")
    sp.add_argument("--target-latency", metavar="T", help="latency budget, e.g. 1.5ms, from a latency table "
                    "(repas profile)")
    sp.add_argument("--latency-table", metavar="FILE", help="latency table (config: search.latency_table; "
                    "default RUN_DIR/latency.csv)")


def _tile(text: str) -> list[int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise RepasError(f"--tile {text!r}: expected HEIGHTxWIDTH, e.g. 128x128") from None
    return [h, w]


def _config(args: argparse.Namespace) -> PipelineConfig:
    from repas.config import load_config

    sets = list(args.set)
    values = {}  # flag values go in as they are (a path is not YAML)
    for flag, key in (("run_dir", "run_dir"), ("seed", "seed"), ("threads", "threads"), ("data", "data.root")):
        value = getattr(args, flag, None)
        if value is not None:
            values[key] = value
    if getattr(args, "epochs", None) is not None:
        stages = TRAINING if args.command == "pipeline" else ("finetune",) if args.command == "extract" else (
            args.command,)
        sets += [f"{s}.epochs={args.epochs}" for s in stages]
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
        if args.run_dir is not None and args.run_dir != args.run:
            raise RepasError(f"two run directories given: {args.run} and --run-dir {args.run_dir}")
        values["run_dir"] = args.run
    if getattr(args, "format", None) is not None:
        values["export.formats"] = [f.strip() for f in args.format.split(",") if f.strip()]
    if getattr(args, "int8", None) is not None:
        values["export.int8"] = args.int8
    if getattr(args, "tile", None) is not None:
        values["export.tile"] = _tile(args.tile)
    if getattr(args, "targets", None) is not None:
        values["extract.targets"] = [t.strip() for t in args.targets.split(",") if t.strip()]
    return load_config(args.config, sets, values)


def _info(target: str) -> None:
    from repas.search.cost import cost
    from repas.spec import ArchSpec
    from repas.supernet import create_supernet_spec

    path = Path(target)
    spec = ArchSpec.load(path) if path.exists() else create_supernet_spec(target)
    sizes = spec.feature_sizes()
    what = f"x{spec.scale}" if spec.task == "super-resolution" else f"{spec.num_classes} classes"
    print(f"{spec.name}: {spec.task}, input {spec.in_channels}x{spec.input_size[0]}x{spec.input_size[1]}, {what}")
    print(f"{'layer':>5} {'in':>5} {'out':>5} {'k':>2} {'s':>2} {'size':>7} {'gated':>5} {'MACs':>12} "
          f"{'params':>10}  branches")
    for i, lay in enumerate(spec.layers):
        widths = [0] * len(spec.layers)
        widths[i] = lay.out_channels
        c_in = spec.in_channels_of(i)
        k2 = lay.kernel ** 2
        h, w = sizes[i]
        print(f"{i:>5} {c_in:>5} {lay.out_channels:>5} {lay.kernel:>2} {lay.stride:>2} {f'{h}x{w}':>7} "
              f"{'yes' if lay.gated else 'no':>5} {k2 * h * w * c_in * lay.out_channels:>12,} "
              f"{k2 * c_in * lay.out_channels + lay.out_channels:>10,}  {','.join(lay.branches)}")
    c = spec.layers[-1].out_channels
    if spec.task == "super-resolution":
        h, w = spec.input_size
        print(f"{'tail':>5} {spec.in_channels:>5} {c:>5} {1:>2} {1:>2} {f'{h}x{w}':>7} {'no':>5} "
              f"{h * w * spec.in_channels * c:>12,} {0:>10,}  residual (fixed 1x1) + PixelShuffle(x{spec.scale})")
    else:
        print(f"{'head':>5} {c:>5} {spec.num_classes:>5} {'':>2} {'':>2} {'1x1':>7} {'no':>5} "
              f"{c * spec.num_classes:>12,} {c * spec.num_classes + spec.num_classes:>10,}  linear")
    print(f"total: {float(cost(spec, spec.widths, 'macs')):,.0f} MACs, "
          f"{float(cost(spec, spec.widths, 'params')):,.0f} params")


def _model_dir(path: Path) -> Path:
    """A model directory, or the best one inside a run directory (fused first)."""
    if (path / "spec.json").exists() and (path / "weights.safetensors").exists():
        return path
    for stage in ("fuse", "finetune", "extract", "search", "train"):
        if (path / stage / "weights.safetensors").exists():
            return path / stage
    raise RepasError(f"{path} holds no model: expected spec.json + weights.safetensors, or a run directory")


def _upscale(args: argparse.Namespace) -> None:
    from repas.colour import to_rgb_u8
    from repas.deploy.runner import open_image, save_image
    from repas.supernet import fuse_net, load_model
    from repas.tasks.super_resolution import receptive_radius, upscale_image

    model = fuse_net(load_model(_model_dir(Path(args.model))).eval())
    if model.spec.task != "super-resolution":
        raise RepasError(f"{args.model} is a {model.spec.task} model, not a super-resolution one")
    rgb, _ = to_rgb_u8(open_image(args.image))
    out = upscale_image(model, rgb, model.spec.scale, model.spec.in_channels, args.tile, receptive_radius(model))
    save_image(out, args.output)
    print(f"wrote {args.output}: {rgb.shape[1]}x{rgb.shape[0]} -> {out.shape[1]}x{out.shape[0]}")


def run(args: argparse.Namespace) -> int:
    if args.command == "predict":  # before anything that needs torch: a bundle runs without it
        from repas.deploy.runner import predict

        print(predict(args.bundle, args.image, args.output, args.format, args.precision, args.top, args.threads))
        return 0
    from repas import stages

    if args.command == "info":
        _info(args.target)
        return 0
    if args.command == "upscale":
        _upscale(args)
        return 0
    cfg = _config(args)
    if args.command == "data":
        print(stages.get_data(cfg).describe())
        return 0
    source = getattr(args, "source", None)
    resume = getattr(args, "resume", None) or False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if args.command not in ("train", "search", "finetune", "pipeline"):
            raise RepasError(f"'repas {args.command}' runs in one process; under torchrun only train, search, "
                             "finetune and pipeline run")
        from repas.distributed import init_distributed

        init_distributed()
    if args.command == "train":
        out = stages.train_stage(cfg, resume=resume)
    elif args.command == "search":
        out = stages.search_stage(cfg, source, resume=resume)
    elif args.command == "profile":
        out = stages.profile_stage(cfg, args.output, from_device=args.from_device)
    elif args.command == "extract" and cfg.extract.targets:
        out = stages.targets_stage(cfg, cfg.extract.targets, source, finetune=args.finetune)
    elif args.command == "extract":
        if args.finetune:
            raise RepasError("--finetune goes with --targets; for one subnet run 'repas finetune' after extract")
        flags = any(getattr(args, f, None) is not None
                    for f in ("target", "target_macs", "target_params", "target_latency"))
        out = stages.extract_stage(cfg, source, target_from_search=not flags)
    elif args.command == "finetune":
        out = stages.finetune_stage(cfg, source, resume=resume)
    elif args.command == "fuse":
        out = stages.fuse_stage(cfg, source)
    elif args.command == "export":
        out = stages.export_stage(cfg, source)
    else:
        stages.run_pipeline(cfg, resume=resume)
        out = Path(cfg.run_dir) / "report.md"
    if "repas.distributed" not in sys.modules or sys.modules["repas.distributed"].is_main():
        print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except RepasError as e:
        if args.debug:
            raise
        print(f"repas: error: {e}", file=sys.stderr)
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
