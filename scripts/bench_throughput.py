"""Training throughput of each training stage, in images per second and as a fraction of the
machine's float32 GEMM rate: the data path alone, then dense training (gates frozen), search
steps (PaS: gates + budget) and fine-tuning (the net cut to 0.5x MACs), each with each
speed option, on the CPU or a GPU.

    python scripts/bench_throughput.py --space repvgg-a0 --size 224 --batch 64 --device cuda
    python scripts/bench_throughput.py --space repvgg-fmnist --size 28 --batch 128   # CPU

Synthetic uint8 images (the in-memory loader, random crop + flip), so nothing is
downloaded; the numbers are those a user's `report.json` shows as ``images_per_s``.
Prints a markdown table with the date, machine and command.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

from repas import distributed
from repas.config import SearchConfig
from repas.data import TensorImages, TensorLoader
from repas.deploy import cpu_name
from repas.search import Budget, create_method, spec_cost
from repas.supernet import build, create_supernet_spec
from repas.tasks import ClassificationTask
from repas.train import Trainer


def data(n: int, size: int, channels: int, classes: int) -> TensorImages:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, classes, (n,), generator=gen)
    return TensorImages(images, labels, (0.5,) * channels, (0.25,) * channels, [str(i) for i in range(classes)])


def loader_rate(loader: TensorLoader) -> float:
    started, n = time.perf_counter(), 0
    for images, _ in loader:
        n += len(images)
    return n / (time.perf_counter() - started)


def stage_model(args: argparse.Namespace, stage: str, channels: int) -> tuple[torch.nn.Module, list]:
    """The net a stage trains, and its loss terms: the dense supernet (gates frozen), the
    supernet under PaS, or the net cut to 0.5x MACs by uniform scaling (fine-tuning)."""
    torch.manual_seed(0)
    spec = create_supernet_spec(args.space, input_size=(args.size, args.size), num_classes=args.classes,
                                in_channels=channels)
    model = build(spec)
    if stage == "dense":
        model.freeze_gates()
        return model, []
    if stage == "finetune":
        return create_method("uniform", model, target=0.5).extract(), []
    return model, [create_method("pas", model, Budget(spec, 0.5 * spec_cost(spec), alpha=5.0))]


def step_flops(model: torch.nn.Module, batch: torch.Tensor) -> float:
    """FLOPs (2 per multiply-add) of one training step's forward and backward, as executed
    (every branch of a multi-branch block, not the fused MACs)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    net = copy.deepcopy(model).train()
    with FlopCounterMode(display=False) as counter:
        net(batch).sum().backward()
    return float(counter.get_total_flops())


def gemm_rate(device: str, dtype: torch.dtype = torch.float32, n: int = 1024) -> float:
    """The machine's matrix-multiply rate in FLOP/s (best of 5 runs of ten n x n products)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(6):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(10):
            a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 10 * 2 * n ** 3 / best


def stage_rate(args: argparse.Namespace, stage: str, images: TensorImages, **options: bool) -> float:
    """Images per second of the second of two epochs (the first warms up / compiles)."""
    model, terms = stage_model(args, stage, images.images.shape[1])
    cfg = SearchConfig(epochs=2, batch_size=args.batch, **options)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, ClassificationTask(0.1), cfg, tmp, terms=terms,
                          gate_lr=cfg.gate_lr if terms else None, progress=False, device=torch.device(args.device))
        trainer.fit(TensorLoader(images, args.batch, shuffle=True, augment=True, drop_last=True))
    return trainer.history[-1]["images_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--space", default="repvgg-fmnist")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="steps per epoch")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--options", default="plain,channels_last,amp,amp+channels_last,compile,compile+channels_last",
                   help="comma-separated; each a +-joined set of amp, channels_last, compile")
    p.add_argument("--stages", default="dense,search,finetune")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images = data(args.batch * args.steps, args.size, args.channels, args.classes)
    gemm = gemm_rate(args.device)
    sample = images.normalize(images.images[:args.batch])
    rows = [("data path (loader alone)", "", loader_rate(TensorLoader(images, args.batch, shuffle=True, augment=True)),
             None)]
    for stage in args.stages.split(","):
        model, _ = stage_model(args, stage, images.images.shape[1])
        flops_per_image = step_flops(model, sample) / args.batch
        for option in args.options.split(","):
            flags = {k: True for k in option.split("+") if k != "plain"}
            rate = stage_rate(args, stage, images, **flags)
            rows.append((stage, option, rate, rate * flops_per_image / gemm))
            print(f"{stage} {option}: {rate:,.0f} images/s", file=sys.stderr, flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{cpu_name()}, " \
        f"{torch.get_num_threads()} threads"
    print(f"{time.strftime('%Y-%m-%d')}, {device}, torch {torch.__version__}; {args.space} at "
          f"{args.size}x{args.size}, batch {args.batch}, {args.steps} steps an epoch (the second epoch timed). "
          f"float32 GEMM rate (1024x1024 products): {gemm / 1e9:.0f} GFLOP/s; a step's FLOPs are counted by "
          "torch.utils.flop_counter (forward and backward, every branch).\n")
    print(f"Command: `python {' '.join(sys.argv)}`\n")
    print("| stage | options | images / s | fraction of the fp32 GEMM rate |\n|---|---|---|---|")
    for stage, option, rate, fraction in rows:
        print(f"| {stage} | {option} | {rate:,.0f} | {'' if fraction is None else f'{fraction:.0%}'} |")
    distributed.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
