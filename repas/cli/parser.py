"""The ``repas`` command line: its arguments. Every subcommand that runs a stage reads a
YAML config (``--config``; without it, the config a stage recorded in the directory it
reads, else the defaults) with ``--set section.key=value`` overrides and a few shortcuts."""

from __future__ import annotations

import argparse

TRAINING = ("train", "search", "finetune")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from repas import __version__

    p = argparse.ArgumentParser(prog="repas", description="Pruning-as-Search with structural reparameterization")
    p.add_argument("--version", action="version", version=f"repas {__version__}")
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
        sp.add_argument("--trust-builder", action="store_true", help="run model.builder even when it is not one "
                        "repas loads by default (torchvision.models, timm, repas.models): it is code that runs")
        if source:
            sp.add_argument("--from", dest="source", metavar="DIR", help="input model directory "
                            "(default: the previous stage's directory in the run directory)")
        return sp

    add("data", "obtain the dataset (installs Fashion-MNIST's Debian package when possible)")
    for name, help_ in (("train", "train the dense supernet"), ("search", "search layer widths under a budget"),
                        ("finetune", "fine-tune the extracted subnet"), ("pipeline", "run every stage")):
        sp = add(name, help_, source=name in ("search", "finetune"))
        sp.add_argument("--epochs", type=int, help="epochs of this stage (pipeline: of every training stage)")
        sp.add_argument("--minutes", type=float,
                        help="wall-clock minutes of this stage (pipeline: of every training stage): the lr schedule "
                        "runs on the clock and --epochs becomes an upper bound")
        sp.add_argument("--resume", nargs="?", const=True, choices=("auto",),
                        help="continue from the stage's checkpoint.pt; '--resume auto' continues where a run "
                        "stopped: complete stages are skipped, a stage with a checkpoint resumes (mid-epoch "
                        "too), the others start")
        if name in ("search", "pipeline"):
            _budget_args(sp)
            sp.add_argument("--method", metavar="NAME", help="how widths are chosen: a registered pruning method: "
                            "uniform (default: measured best), eagleeye, pas, taylor, l1 ... ('repas methods' lists "
                            "them all)")
            if name == "pipeline":
                _int8_args(sp)
            sp.add_argument("--max-drop", type=float, metavar="D",
                            help="error-tolerance mode instead of a budget: the smallest net whose validation "
                            "top-1 (points) or PSNR (dB) is at most D below the dense net's (holds out "
                            "data.val_fraction of the training data, 0.1 by default)")
    sp = add("extract", "cut the searched subnet out of the supernet", source=True)
    _budget_args(sp)
    sp.add_argument("--round-to", type=int, help="round widths to a multiple (e.g. 8)")
    sp.add_argument("--targets", metavar="T1,T2,...", help="many subnets from one search, e.g. 0.5,0.3 "
                    "(fractions of the dense cost), 1ms,2ms (latency) or 2M,3M (absolute, in search.metric): "
                    "written to RUN_DIR/targets/<target>/")
    sp.add_argument("--allocation", choices=("ranked", "threshold"),
                    help="with --targets: widths by importance per unit of cost (ranked, default) or one global "
                    "threshold on the gate scores")
    sp.add_argument("--finetune", action="store_true",
                    help="with --targets: also fine-tune, fuse and export each subnet and measure its latency")
    sp.add_argument("--epochs", type=int, help="with --finetune: fine-tuning epochs")
    sp = add("analyze", "does a pruned net keep its dense parent's representations? linear CKA and SVCCA per block")
    sp.add_argument("dense", metavar="DENSE", help="the dense net's model directory, e.g. runs/fmnist/train")
    sp.add_argument("pruned", metavar="PRUNED", help="the pruned net's model directory, e.g. runs/fmnist/finetune")
    sp.add_argument("--images", type=_positive, default=512, help="test images compared (default 512)")
    sp.add_argument("--out", metavar="DIR", help="where analyze.md / .json / .png go (default: PRUNED/../analyze)")
    sp = add("profile", "measure a latency table of the space's layer shapes on this machine")
    sp.add_argument("--backend", choices=("onnxruntime", "torch", "executorch", "executorch-int8"),
                    help="runtime to time (config: profile.backend; default onnxruntime); executorch-int8: every "
                    "layer in int8, as export's int8 .pte runs it")
    sp.add_argument("--divisor", type=_positive, help="channel counts measured: multiples of this (default 4)")
    sp.add_argument("-o", "--output", metavar="FILE",
                    help="table to write (default: search.latency_table, else RUN_DIR/latency.csv)")
    sp.add_argument("--from-device", metavar="DIR", help="build the table from micro-models timed on another "
                    "device (scripts/export_micro_models.py, then scripts/time_micro_models.py there)")
    add("fuse", "fuse every multi-branch block into one conv", source=True)
    sp = add("export", "the deployment bundle: .onnx / .pte (float and int8), each checked, scored and timed",
             source=True)
    sp.add_argument("run", nargs="?", metavar="DIR", help="the run directory (same as --run-dir), or a model "
                    "directory to export (e.g. RUN_DIR/fuse; the bundle goes to RUN_DIR/export)")
    sp.add_argument("--format", metavar="FMT[,FMT]", help="onnx, pte or onnx,pte (config: export.formats; "
                    "default onnx, plus pte where ExecuTorch is installed)")
    sp.add_argument("--int8", action=argparse.BooleanOptionalAction, default=None,
                    help="also int8 models, calibrated on training inputs (config: export.int8; default on)")
    sp.add_argument("--tile", metavar="HxW", help="SR: the static LR input of the exported files, e.g. 128x128 "
                    "(config: export.tile; default the spec's input size)")
    _int8_args(sp)
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
    sp = sub.add_parser("info", help="per-layer widths, MACs and params of a space, model or run",
                        description="per-layer widths, MACs and params of a search space, a spec.json, a model "
                        "directory (a searched one: the widths its gates keep) or a run directory (its best model, "
                        "and its report)")
    sp.add_argument("target", help="a search space name, a spec.json, a model directory, a pruned user model "
                    "(pruned.json) or a run directory")
    sp.add_argument("--trust-builder", action="store_true", help="a pruned user model: run its builder even when it "
                    "is not one repas loads by default (torchvision.models, timm, repas.models)")
    sp.add_argument("--debug", action="store_true")
    sp = sub.add_parser("methods", help="list the registered pruning methods",
                        description="list the registered pruning methods (search --method NAME)")
    sp.add_argument("--debug", action="store_true")
    return p


def _int8_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--qat", action=argparse.BooleanOptionalAction, default=None,
                    help="int8 .pte by quantization-aware training of the fused net (config: export.qat; "
                    "export.qat_epochs, export.qat_lr) instead of post-training calibration; needs ExecuTorch")
    sp.add_argument("--observer", choices=("minmax", "histogram", "percentile", "mse"),
                    help="post-training int8 activation observer (config: export.observer; default histogram)")


def _budget_args(sp: argparse.ArgumentParser) -> None:
    one = sp.add_mutually_exclusive_group()  # two budgets at once: argparse says so
    one.add_argument("--target", type=float, help="budget as a fraction of the dense cost, e.g. 0.5")
    one.add_argument("--target-macs", metavar="N", help="absolute MACs budget, e.g. 2.5M")
    one.add_argument("--target-params", metavar="N", help="absolute parameter budget, e.g. 40K")
    one.add_argument("--target-latency", metavar="T", help="latency budget, e.g. 1.5ms, from a latency table "
                     "(repas profile)")
    sp.add_argument("--latency-table", metavar="FILE", help="latency table (config: search.latency_table; "
                    "default RUN_DIR/latency.csv)")
