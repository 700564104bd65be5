"""Training throughput of a supernet search, in images per second: the data path alone,
then search steps (gates + budget) with each speed option, on the CPU or a GPU.

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


def search_rate(args: argparse.Namespace, images: TensorImages, **options: bool) -> float:
    """Images per second of the second of two epochs (the first warms up / compiles)."""
    torch.manual_seed(0)
    spec = create_supernet_spec(args.space, input_size=(args.size, args.size), num_classes=args.classes,
                                in_channels=images.images.shape[1])
    model = build(spec)
    budget = Budget(spec, 0.5 * spec_cost(spec), alpha=5.0)
    cfg = SearchConfig(epochs=2, batch_size=args.batch, **options)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, ClassificationTask(0.1), cfg, tmp, terms=[create_method("pas", model, budget)],
                          gate_lr=cfg.gate_lr,
                          progress=False, device=torch.device(args.device))
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
    p.add_argument("--options", default="plain,amp,amp+channels_last,amp+channels_last+compile",
                   help="comma-separated; each a +-joined set of amp, channels_last, compile")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images = data(args.batch * args.steps, args.size, args.channels, args.classes)
    rows = [("data path (loader alone)", loader_rate(TensorLoader(images, args.batch, shuffle=True, augment=True)))]
    for option in args.options.split(","):
        flags = {k: True for k in option.split("+") if k != "plain"}
        rows.append((f"search step, {option}", search_rate(args, images, **flags)))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{cpu_name()}, " \
        f"{torch.get_num_threads()} threads"
    print(f"{time.strftime('%Y-%m-%d')}, {device}, torch {torch.__version__}; {args.space} at "
          f"{args.size}x{args.size}, batch {args.batch}, {args.steps} steps an epoch (the second epoch timed).\n")
    print(f"Command: `python {' '.join(sys.argv)}`\n")
    print("| | images / s |\n|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} |")
    distributed.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
