"""x2 super-resolution on real photos: bicubic vs a fixed ECBSR-M4C16 vs a subnet searched
from an ECBSR-M4C32 supernet at the MACs of M4C16, with the same recipe and total steps.

    repas pipeline --config configs/sr_x2.yaml            # the searched net (runs/sr_x2)
    python scripts/bench_sr.py --searched runs/sr_x2      # trains the fixed net, compares

The fixed net is trained from scratch with the pipeline's training recipe for as many
steps as the pipeline's train + search + finetune stages took together (the same total
training budget in steps; a supernet step costs more than an M4C16 step). Both nets are
scored fused, by the standard protocol (Y channel, uint8, `scale` border cropped), on TEST
(8 held-out photos) and Set7-pkg (7 photos from scikit-image / scikit-learn); latency is
onnxruntime CPU at a 640x360 LR input, batch 1, interleaved.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from repas.config import load_config
from repas.data.sr_images import eval_images, load_pairs, set7_pkg
from repas.deploy import export_onnx, onnx_latency_interleaved
from repas.search import spec_cost
from repas.supernet import build, create_supernet_spec, fuse_repnet, load_model, save_model
from repas.task_data import SuperResolutionData, bicubic_scores
from repas.tasks.super_resolution import SuperResolutionTask
from repas.train import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--searched", required=True, help="run directory of 'repas pipeline --config configs/sr_x2.yaml'")
    ap.add_argument("--config", default="configs/sr_x2.yaml")
    ap.add_argument("--out", default="runs/bench_sr")
    ap.add_argument("--fixed", default="ecbsr-m4c16")
    args = ap.parse_args()
    cfg = load_config(args.config)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    data = SuperResolutionData(cfg)
    scale, colour = cfg.data.scale, cfg.data.colour
    set7 = load_pairs(set7_pkg(), scale)
    sets = {"TEST": data.test_pairs, "Set7-pkg": set7}

    # the fixed net: same recipe, as many steps as the pipeline's three training stages
    total_epochs = cfg.train.epochs + cfg.search.epochs + cfg.finetune.epochs
    recipe = dataclasses.replace(cfg.train, epochs=total_epochs)
    out = Path(args.out)
    fixed_dir = out / "fixed"
    if not (fixed_dir / "weights.safetensors").exists():
        torch.manual_seed(cfg.seed)
        model = build(create_supernet_spec(args.fixed, scale=scale, in_channels=1 if colour == "y" else 3))
        model.freeze_gates()
        trainer = Trainer(model, SuperResolutionTask(scale), recipe, out / "fixed-train")
        started = time.perf_counter()
        trainer.fit(data.train_loader(recipe), resume=(out / "fixed-train" / "checkpoint.pt").exists())
        print(f"fixed net trained: {total_epochs} epochs x {cfg.data.batches_per_epoch} steps in "
              f"{(time.perf_counter() - started) / 60:.1f} min", flush=True)
        save_model(model, fixed_dir)
    nets = {"ECBSR-M4C16 (fixed)": fuse_repnet(load_model(fixed_dir).eval()),
            "searched from M4C32": fuse_repnet(load_model(Path(args.searched) / "finetune").eval())}

    rows = {"bicubic": {"macs": None, **{f"{n} {k}": v for n, p in sets.items()
                                        for k, v in bicubic_scores(p, colour, scale).items()}}}
    tmp = Path(tempfile.mkdtemp())
    paths = {}
    for name, net in nets.items():
        task = SuperResolutionTask(scale)
        row = {"macs": spec_cost(net.spec), "widths": net.spec.widths}
        for set_name, pairs in sets.items():
            for k, v in task.evaluate(net, eval_images(pairs, colour)).items():
                row[f"{set_name} {k}"] = v
        rows[name] = row
        paths[name] = export_onnx(net, (1, net.spec.in_channels, 360, 640), tmp / f"{len(paths)}.onnx")
    latency = onnx_latency_interleaved(paths, (1, 1 if colour == "y" else 3, 360, 640), threads=1, warmup=3, runs=20)
    for name in nets:
        rows[name]["ort_ms_640x360"] = latency[name]["median_ms"]

    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"x{scale} {colour.upper()}, training {total_epochs} epochs x {cfg.data.batches_per_epoch} steps of "
          f"{cfg.train.batch_size} {cfg.data.patch}px patches each net\n")
    print("| method | widths | MACs @640x360 | TEST PSNR | TEST SSIM | Set7-pkg PSNR | Set7-pkg SSIM | "
          "ORT 1 thread @640x360 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        macs = f"{r['macs'] / 1e9:.3f} G" if r["macs"] else "-"
        ms = f"{r['ort_ms_640x360']:.1f} ms" if "ort_ms_640x360" in r else "-"
        widths = "/".join(map(str, r["widths"])) if "widths" in r else "-"
        print(f"| {name} | {widths} | {macs} | {r['TEST psnr']:.3f} | {r['TEST ssim']:.4f} | "
              f"{r['Set7-pkg psnr']:.3f} | {r['Set7-pkg ssim']:.4f} | {ms} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
