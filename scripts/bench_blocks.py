"""Same searched widths, different fusible blocks: Fashion-MNIST top-1 after the same recipe.

    python scripts/bench_blocks.py --spec runs/fmnist/extract [--epochs 6] [--blocks RepVGG,DBB,MobileOne-style]

Builds the spec's widths with each block type (branches swapped, identity kept where the
shape allows), trains each from the same seed with the same recipe (the config's train
section), fuses it, and reports PyTorch top-1 of the fused net on the test split, the
training time per epoch, and the fused net's MACs (the same for every block: fusion
leaves one conv per layer).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from repas.config import load_config
from repas.search import spec_cost
from repas.spec import ArchSpec
from repas.stages import get_data
from repas.supernet import build, fuse_repnet, with_branches
from repas.train import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from bench_fuse import BLOCKS  # noqa: E402


def plain_widths(spec: ArchSpec) -> ArchSpec:
    """The spec's widths as a fresh net: no identity maps (an identity branch only where a
    layer keeps its shape), no gates."""
    d = spec.to_dict()
    for i, lay in enumerate(d["layers"]):
        keeps_shape = lay["stride"] == 1 and spec.in_channels_of(i) == lay["out_channels"]
        lay.update(identity_map=None, gated=False, mid_channels=None,
                   branches=[b for b in lay["branches"] if keeps_shape or not b.startswith("identity")])
    return ArchSpec.from_dict(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", required=True, help="spec.json or model directory with the searched widths")
    ap.add_argument("--config", default="configs/fmnist.yaml")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--blocks", default=",".join(BLOCKS))
    ap.add_argument("--out", default="runs/bench_blocks")
    args = ap.parse_args()
    cfg = load_config(args.config)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    base = plain_widths(ArchSpec.load(args.spec))
    data = get_data(cfg)
    recipe = cfg.train
    recipe.epochs = args.epochs
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; widths {base.widths}, {spec_cost(base) / 1e6:.3f} M MACs fused; "
          f"{args.epochs} epochs, lr {recipe.lr}, {recipe.opt}, {recipe.sched}, seed {cfg.seed}\n")
    print("| block | branches | fused top-1 | s / epoch |")
    print("|---|---|---|---|")
    results = {}
    for name in args.blocks.split(","):
        spec = with_branches(base, BLOCKS[name])
        torch.manual_seed(cfg.seed)
        model = build(spec)
        train, test = data.train_loader(recipe), data.eval_batches(recipe)
        task = data.task(recipe, spec)
        trainer = Trainer(model, task, recipe, Path(args.out) / name)
        started = time.perf_counter()
        trainer.fit(train)
        seconds = (time.perf_counter() - started) / args.epochs
        top1 = task.evaluate(fuse_repnet(trainer.eval_model.eval()), test)["top1"]
        results[name] = {"top1": top1, "seconds_per_epoch": seconds}
        print(f"| {name} | {', '.join(BLOCKS[name])} | {top1:.2f}% | {seconds:.0f} |", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
