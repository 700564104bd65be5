"""int8 without loss? Post-training observers against quantization-aware training, by measurement.

For each seed, the dense net of a config (``repas train``'s recipe, in RUN_ROOT/seed-S/train,
reused when it is complete) is fused and scored on the whole test split, as a .pte run in
ExecuTorch's runtime (XNNPACK, batch 1), in float and in each int8 variant:

- ``ptq-export-256``: what ``repas export`` does today (``repas.deploy.quantize.quantize_pt2e``,
  256 calibration inputs one at a time; the XNNPACK config's HistogramObserver);
- ``ptq-OBSERVER-N``: ``repas.deploy.qat.quantize_ptq`` with that activation observer
  (minmax, histogram, percentile, mse) on N training inputs (``--calibration``);
- ``qat-fused-...``: PT2E QAT of the fused net (``prepare_qat``), ``--qat-epochs`` of SGD
  (momentum 0.9, cosine from the lr in the name to 0, the config's label smoothing), observers
  frozen after ``--freeze`` of the steps; then ``convert_qat`` (no calibration);
- ``qat-fusedstock-...``: the same with ExecuTorch's stock QAT weight fake-quant (its fused
  kernel quantizes one-sign weight channels asymmetrically, unlike the converted net);
- ``qat-multibranch-...``: the same on the multi-branch net, the fused kernel computed from
  the branches every step (BatchNorm at its running statistics) and fake-quantized.

Every row records the PyTorch int8 reference's top-1 beside the .pte's (they should agree),
the seconds it took, and for QAT the seconds per epoch against a float epoch of the same
loop on the fused net. Rows are written to OUT.json (atomically) as each finishes; a rerun
skips finished rows. OUT.md holds the table.

    OMP_WAIT_POLICY=PASSIVE python scripts/bench_int8.py --config configs/fmnist.yaml --seeds 0,1,2
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle OpenMP threads sleep

import argparse
import copy
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_harness import cell  # noqa: E402

from repas.atomic import atomic_write_json, atomic_write_text
from repas.config import load_config
from repas.deploy import cpu_name
from repas.deploy import qat as Q
from repas.errors import RepasError
from repas.stages import train_stage
from repas.stages.qat import prepare_qat_multibranch
from repas.supernet import fuse, load_model
from repas.task_data import make_task_data

PTQ_OBSERVERS = ("minmax", "histogram", "percentile", "mse")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def variants(args: argparse.Namespace) -> list[str]:
    out = ["float", "ptq-export-256"]
    out += [f"ptq-{o}-{n}" for n in args.calibration for o in PTQ_OBSERVERS]
    for e in args.qat_epochs:
        for where in args.qat:
            out += [f"qat-{where}-lr{lr:g}-e{e:g}" for lr in args.qat_lr]
        if args.control:
            out += [f"ft-fused-lr{lr:g}-e{e:g}" for lr in args.qat_lr]
    return out


# ---- scoring ---------------------------------------------------------------------------------

@torch.no_grad()
def torch_top1(model: torch.nn.Module, data: Any) -> float:  # noqa: ANN401
    test = data.data.test
    images, labels = test.normalize(test.images), test.labels
    correct, batch = 0, 1000
    try:
        model(images[:2])
    except AssertionError:  # a graph exported at batch 1 (today's quantize_pt2e) runs only at batch 1
        batch = 1
    for i in range(0, len(labels), batch):
        correct += int((model(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
    return 100.0 * correct / len(labels)


def pte_top1(model: torch.nn.Module, data: Any, spec: Any, shape: tuple[int, ...], path: Path) -> float:  # noqa: ANN401
    """Top-1 of ``model`` lowered to a .pte (every op on XNNPACK) and run in ExecuTorch's
    runtime, one test image at a time."""
    from repas.deploy.bundle import non_delegated_ops
    from repas.deploy.executorch_export import lower_program
    from repas.deploy.runner import pte_runner

    program, edge = lower_program(model, (torch.zeros(*shape),))
    left = non_delegated_ops(edge)
    if left:
        raise RepasError(f"the .pte leaves ops outside XNNPACK: {', '.join(left)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(program)
    return data.score(pte_runner(path), spec, shape)["top1"]


# ---- QAT ---------------------------------------------------------------------------------------

def train_loop(model: torch.nn.Module, data: Any, cfg: Any, *, epochs: float, lr: float,  # noqa: ANN401
               freeze: float | None, steps: int | None = None, seed: int = 0) -> dict[str, float]:
    """SGD (momentum 0.9, no weight decay), cosine from ``lr`` to 0 over ``epochs`` of the
    config's training batches (augmented as in training), label smoothing as configured.
    ``freeze``: the fraction of steps after which QAT observers stop. ``steps``: stop
    early (timing). Returns seconds and steps."""
    loader = data.train_loader(cfg.train)
    per_epoch = len(loader)
    total = max(1, round(epochs * per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    model.train()
    step, started = 0, time.perf_counter()
    for epoch in range(math.ceil(epochs)):
        loader.set_epoch(1000 + epoch)  # not the dense run's epoch-0 order
        for x, y in loader:
            if step >= total or (steps is not None and step >= steps):
                break
            if freeze is not None and step == int(freeze * total):
                Q.freeze_observers(model)
            for g in opt.param_groups:
                g["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(x), y, label_smoothing=cfg.train.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 100 == 0:
                log(f"  step {step}/{total} loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)")
    model.eval()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps": step, "steps_per_epoch": per_epoch,
            "seconds_per_epoch": seconds / step * per_epoch}


def float_epoch_seconds(fused: torch.nn.Module, data: Any, cfg: Any, steps: int = 60) -> float:  # noqa: ANN401
    """Seconds of one epoch of ``train_loop`` on the float fused net (timed over ``steps``)."""
    model = copy.deepcopy(fused)
    for p in model.parameters():
        p.requires_grad_(True)
    train_loop(model, data, cfg, epochs=1, lr=1e-4, freeze=None, steps=5)  # warm-up
    return train_loop(model, data, cfg, epochs=1, lr=1e-4, freeze=None, steps=steps)["seconds_per_epoch"]


# ---- one seed --------------------------------------------------------------------------------

def run_variant(name: str, ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:  # noqa: ANN401
    fused, data, cfg, spec, shape = ctx["fused"], ctx["data"], ctx["cfg"], ctx["spec"], ctx["shape"]
    pte = ctx["dir"] / f"{name}.pte"
    example = torch.zeros(*shape)
    started = time.perf_counter()
    row: dict[str, Any] = {}
    if name == "float":
        model = fused
    elif name == "ptq-export-256":
        from repas.deploy.quantize import quantize_pt2e

        model = quantize_pt2e(fused, example, data.calibration_inputs(shape, 256))
    elif name.startswith("ptq-"):
        _, observer, n = name.split("-")
        calibration = data.calibration_inputs(shape, int(n))[0]
        model = Q.quantize_ptq(fused, example, calibration.split(256), observer)
    elif name.startswith("ft-"):  # the control: QAT's loop on the float net, then today's PTQ
        from repas.deploy.quantize import quantize_pt2e

        _, _, lr, epochs = name.split("-")
        model = copy.deepcopy(fused)
        for p in model.parameters():
            p.requires_grad_(True)
        timing = train_loop(model, data, cfg, epochs=float(epochs[1:]), lr=float(lr[2:]), freeze=None)
        model.eval()
        int8 = quantize_pt2e(model, example, data.calibration_inputs(shape, 256))
        row.update(train_seconds=timing["seconds"], top1_ptq_torch=torch_top1(int8, data),
                   top1_ptq_pte=pte_top1(int8, data, spec, shape, ctx["dir"] / f"{name}-int8.pte"))
    else:
        _, where, lr, epochs = name.split("-")
        lr, epochs = float(lr[2:]), float(epochs[1:])
        prepared = (prepare_qat_multibranch(ctx["net"], example) if where == "multibranch" else
                    Q.prepare_qat(fused, example, exact_weights=where == "fused"))
        timing = train_loop(prepared, data, cfg, epochs=epochs, lr=lr, freeze=args.freeze)
        row.update(qat_seconds=timing["seconds"], qat_seconds_per_epoch=timing["seconds_per_epoch"],
                   qat_steps=timing["steps"], float_seconds_per_epoch=ctx["float_epoch_s"],
                   qat_vs_float_epoch=timing["seconds_per_epoch"] / ctx["float_epoch_s"],
                   top1_fake_quant=torch_top1(prepared, data))
        if where == "multibranch":
            row["top1_trained_float"] = torch_top1(prepared.fused_net().eval(), data)
        model = Q.convert_qat(prepared)
    row["top1_torch"] = torch_top1(model, data)
    row["top1_pte"] = pte_top1(model, data, spec, shape, pte)
    row["seconds"] = time.perf_counter() - started
    return row


def seed_context(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    values = {"run_dir": str(Path(args.run_root) / f"seed-{seed}"), "seed": seed, "threads": args.threads}
    overrides = list(args.set) + ([f"train.epochs={args.train_epochs}"] if args.train_epochs else [])
    cfg = load_config(args.config, overrides=overrides, values=values)
    data = make_task_data(cfg)
    log(f"seed {seed}: the dense net ({cfg.train.epochs} epochs) in {cfg.run_dir}/train")
    path = train_stage(cfg, resume="auto", data=data)
    torch.set_num_threads(args.threads)
    net = load_model(path).eval()
    fused = fuse(net).eval()
    shape = (1, *data.data.image_shape)
    report = json.loads((Path(path) / "report.json").read_text())
    epochs = [h.get("seconds") for h in report.get("history", []) if isinstance(h, dict) and h.get("seconds")]
    return {"cfg": cfg, "data": data, "net": net, "fused": fused, "spec": fused.spec, "shape": shape, "seed": seed,
            "dir": Path(cfg.run_dir) / "int8", "train_epoch_s": statistics.median(epochs) if epochs else None,
            "train_top1": report.get("test", {}).get("top1")}


# ---- tables ---------------------------------------------------------------------------------

def write_outputs(out: Path, doc: dict[str, Any]) -> None:
    atomic_write_json(out.with_suffix(".json"), doc)
    meta = doc["meta"]
    rows = []
    for r in doc["rows"]:  # a control row shows twice: its float net, and that net in int8 as export makes it
        rows.append(r)
        if "top1_ptq_pte" in r:
            rows.append({**r, "variant": r["variant"] + "+ptq-export-256", "top1_pte": r["top1_ptq_pte"],
                         "top1_torch": r["top1_ptq_torch"]})
    names = list(dict.fromkeys(r["variant"] for r in rows))
    floats = {r["seed"]: r["top1_pte"] for r in rows if r["variant"] == "float"}
    lines = [f"# int8 on {meta['config']}: post-training observers against quantization-aware training", "",
             f"Written by `scripts/bench_int8.py`. Last run: {meta['runs'][-1]['date']} on "
             f"{meta['runs'][-1]['cpu']}, {meta['threads']} thread(s), torch {meta['torch']}, "
             f"ExecuTorch {meta['executorch']}.", "",
             f"Command: `{meta['runs'][-1]['command']}`", "",
             f"The dense net of `{meta['config']}` ({meta['train_epochs']} epochs; seeds "
             f"{', '.join(str(s) for s in sorted({r['seed'] for r in rows}))}), fused. Top-1 (%) on the whole "
             "test split (10k images) of the .pte run in ExecuTorch's runtime (XNNPACK, batch 1); "
             "'torch' is PyTorch's int8 reference of the same quantized graph. Δ is int8 - float per seed, "
             "then mean ± std over seeds. ft-*: the control, QAT's loop on the float fused net (then "
             "'+ptq-export-256': that net through today's PTQ). QAT: SGD momentum 0.9, cosine lr to 0, "
             "label smoothing as "
             f"configured, observers frozen after {meta['freeze']:g} of the steps; the fused net has no "
             "BatchNorm; the multi-branch net trains with BatchNorm at its running statistics "
             "(gamma and beta learn). Epoch seconds: QAT's against the same loop on the float fused net.", "",
             "| variant | seeds | top-1 .pte | Δ vs float | top-1 torch | max abs(.pte - torch) | QAT s/epoch | "
             "float s/epoch | ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        rs = [r for r in rows if r["variant"] == name]
        deltas = [r["top1_pte"] - floats[r["seed"]] for r in rs if r["seed"] in floats]
        gap = max(abs(r["top1_pte"] - r["top1_torch"]) for r in rs)
        qat = [r for r in rs if "qat_seconds_per_epoch" in r]
        lines.append(f"| {name} | {len(rs)} | {cell([r['top1_pte'] for r in rs])} | "
                     f"{cell(deltas) if name != 'float' else ''} | {cell([r['top1_torch'] for r in rs])} | "
                     f"{gap:.2f} | "
                     f"{cell([r['qat_seconds_per_epoch'] for r in qat]) if qat else ''} | "
                     f"{cell([r['float_seconds_per_epoch'] for r in qat]) if qat else ''} | "
                     f"{cell([r['qat_vs_float_epoch'] for r in qat]) if qat else ''} |")
    lines += ["", "Per seed:", "", "| seed | variant | top-1 .pte | top-1 torch | fake-quant | trained float | "
              "seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        fq = f"{r['top1_fake_quant']:.2f}" if "top1_fake_quant" in r else ""
        tf = f"{r['top1_trained_float']:.2f}" if "top1_trained_float" in r else ""
        lines.append(f"| {r['seed']} | {r['variant']} | {r['top1_pte']:.2f} | {r['top1_torch']:.2f} | {fq} | {tf} | "
                     f"{r['seconds']:.0f} |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/fmnist.yaml")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--run-root", default="runs/int8", help="each seed trains in RUN_ROOT/seed-S")
    p.add_argument("--out", default="docs/int8_fmnist", help="writes OUT.json and OUT.md")
    p.add_argument("--train-epochs", type=int, default=0, help="dense epochs (0: the config's)")
    p.add_argument("--calibration", default="256,2048", help="calibration set sizes of the ptq rows")
    p.add_argument("--qat", default="fused,multibranch,fusedstock",
                   help="where QAT runs: fused, multibranch, fusedstock (the fused net with ExecuTorch's stock QAT "
                        "weight fake-quant)")
    p.add_argument("--qat-lr", default="1e-4,1e-3", help="QAT learning rates (one row each)")
    p.add_argument("--qat-epochs", default="0.25,1", help="QAT epochs (one row each)")
    p.add_argument("--freeze", type=float, default=0.5, help="observers freeze after this fraction of QAT steps")
    p.add_argument("--control", type=int, default=1,
                   help="1: also the ft-fused rows (QAT's loop on the float net, then PTQ as export does)")
    p.add_argument("--only", default="", help="comma-separated variants to run (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], help="config override, as repas --set")
    args = p.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        args.calibration = [int(n) for n in args.calibration.split(",") if n]
        args.qat_lr = [float(v) for v in args.qat_lr.split(",") if v]
        args.qat_epochs = [float(v) for v in args.qat_epochs.split(",") if v]
    except ValueError as e:
        p.error(f"--seeds, --calibration and --qat-lr take comma-separated numbers ({e})")
    args.qat = [w for w in args.qat.split(",") if w]
    if any(w not in ("fused", "multibranch", "fusedstock") for w in args.qat):
        p.error("--qat takes some of fused, multibranch, fusedstock")
    torch.set_num_threads(args.threads)
    from repas.deploy.executorch_export import executorch_version, set_executorch_threads

    set_executorch_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".json")
    doc = json.loads(path.read_text()) if path.exists() else {"meta": {}, "rows": []}
    cfg0 = load_config(args.config, overrides=list(args.set))
    train_epochs = args.train_epochs or cfg0.train.epochs
    settings = {"config": args.config, "train_epochs": train_epochs, "freeze": args.freeze, "set": args.set}
    old = {k: doc["meta"].get(k) for k in settings}
    if doc["rows"] and old != settings:
        sys.exit(f"{path} holds rows made with {old}, not {settings}: pass another --out")
    doc["meta"].update(settings, threads=args.threads, torch=torch.__version__, executorch=executorch_version())
    doc["meta"].setdefault("runs", []).append({
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu_name(),
        "command": "OMP_WAIT_POLICY=PASSIVE python " + " ".join(shlex.quote(a) for a in sys.argv)})
    done = {(r["seed"], r["variant"]) for r in doc["rows"]}
    wanted = variants(args)
    if args.only:
        only = args.only.split(",")
        unknown = [v for v in only if v not in wanted]
        if unknown:
            p.error(f"--only: unknown variant(s) {', '.join(unknown)}; this run's: {', '.join(wanted)}")
        wanted = [v for v in wanted if v in only]
    for seed in seeds:
        todo = [v for v in wanted if (seed, v) not in done]
        if not todo:
            continue
        ctx = seed_context(seed, args)
        if any(v.startswith("qat-") for v in todo):
            ctx["float_epoch_s"] = float_epoch_seconds(ctx["fused"], ctx["data"], ctx["cfg"])
            log(f"seed {seed}: a float epoch of the QAT loop takes {ctx['float_epoch_s']:.0f} s "
                f"(the train stage's epochs: {ctx['train_epoch_s']} s)")
        for name in todo:
            log(f"seed {seed}: {name} ...")
            row = run_variant(name, ctx, args)
            row = {"seed": seed, "variant": name, **row, "train_epoch_seconds": ctx["train_epoch_s"],
                   "date": time.strftime("%Y-%m-%d %H:%M:%S")}
            doc["rows"].append(row)
            write_outputs(out, doc)
            log(f"seed {seed}: {name}: .pte top-1 {row['top1_pte']:.2f} (torch {row['top1_torch']:.2f}), "
                f"{row['seconds']:.0f} s")
    write_outputs(out, doc)
    log(f"done: {out}.md")


if __name__ == "__main__":
    main()
