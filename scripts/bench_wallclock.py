"""Worth the compute? The repas pipeline against the obvious small net trained from scratch,
both given the same wall-clock minutes on this machine.

For every time budget T (``--minutes``) and seed, back to back with nothing beside them:

(a) **pipeline**: the configured pipeline (dense supernet -> search -> extract -> fine-tune,
    ``search.compare`` off) with its epochs chosen to fill T: ``--dense-share`` of T trains the
    dense supernet, the rest fine-tunes the final widths (a one-shot method spends no search
    epochs). Epoch times come from one timed epoch of each net before the arms run; the
    fine-tune then runs on the clock (``finetune.minutes``: whatever the earlier stages left
    of T), so the pipeline cannot overrun T on a machine slower than at the probe. With
    ``--set finetune.distill=W`` the fine-tune learns from the fused dense net too; the
    teacher's time is in that timing. With ``--set 'model.branches=[conv_plain]'`` the whole
    pipeline (supernet and final net) uses that block. Each (dense share, distill, block) is
    its own arm.
(b) **scratch**: the same final widths (the pipeline's net, same multi-branch blocks), fresh
    weights, trained with the dense recipe on the clock for T (``train.minutes``). With
    ``--scratch-branches`` the scratch net gets other blocks at the same widths: ``conv`` (conv
    + BN) is a plain VGG-like net, ``conv_plain`` (conv with bias) with an ECBSR space is the
    plain ECBSR-M4C16 of ECBSR's paper, so one run asks whether the branches pay for their time.
    Each scratch variant is its own arm; one per (T, seed) serves every dense share.

Both evaluate once, after their last epoch (``eval_every=0``); T covers training and that
evaluation, not the export, which both need alike. Both are then fused and exported to float
ONNX, scored through onnxruntime and timed there. Rows are saved as they finish
(RUN_DIR/wallclock.json), so a stopped run resumes; writes docs/wallclock_<name>.md / .json.

    python scripts/bench_wallclock.py --config configs/fmnist.yaml --name fmnist --minutes 10,20 --seeds 0
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_harness import RowStore, cell, header, seeds_arg  # noqa: E402

from repas import stages  # noqa: E402
from repas.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from repas.config import PipelineConfig, TrainConfig, load_config  # noqa: E402
from repas.search import create_method, method_class  # noqa: E402
from repas.spec import ArchSpec  # noqa: E402
from repas.stages.common import save_stage  # noqa: E402
from repas.stages.training import run_training
from repas.supernet import build, create_model, fuse, load_model, with_branches
from repas.train import Trainer


def seconds_per_epoch(model: torch.nn.Module, tcfg: TrainConfig, data,
                      teacher: torch.nn.Module | None = None) -> tuple[float, float]:
    """Seconds of one whole training epoch of ``model`` under ``tcfg`` through the real loader
    (after 5 steps of warm-up; with ``teacher`` when ``tcfg.distill`` is on), and of one
    evaluation of the test split (each trained net is evaluated once, not per epoch).

    A whole epoch through the real loader, so the timing holds what the run pays each epoch
    (patch sampling, the per-epoch checkpoint); it costs a minute or two before the arms."""
    loader = data.train_loader(tcfg)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, data.task(tcfg, model.spec), dataclasses.replace(tcfg, epochs=1), tmp, progress=False,
                          teacher=teacher)
        trainer.fit(list(itertools.islice(iter(loader), 5)))
        started = time.perf_counter()
        trainer.fit(loader)
        epoch = time.perf_counter() - started
        started = time.perf_counter()
        trainer.evaluate(data.eval_batches(tcfg), trainer.eval_model)
        evaluation = time.perf_counter() - started
    return epoch, evaluation


def scratch_spec(spec: ArchSpec, branches: list[str] | None) -> ArchSpec:
    """The scratch arm's net: the final widths, with other blocks when ``branches`` is given."""
    return with_branches(spec, branches) if branches else spec


def plan(cfg: PipelineConfig, minutes: float, dense_share: float, data,
         branches: list[str] | None = None) -> dict[str, int | float]:
    """Epochs of each arm that fill ``minutes``: the dense and the final net's epoch times probed."""
    budget = 60.0 * minutes
    blocks = cfg.model.branches  # model.branches: the pipeline's own block, e.g. [conv_plain]
    dense = create_model(cfg.model.space, gated=False, branches=blocks, **data.shape_spec(cfg.model.space))
    t_dense, eval_dense = seconds_per_epoch(dense, cfg.train, data)
    # the final net's cost: the configured budget (absolute, or a fraction of the dense MACs), as the uniform
    # allocation has it; reading only search.target once planned SR's 2.29 G net at 4.4 G, 1.6x slower an epoch
    if cfg.search.metric != "macs":
        raise SystemExit(f"bench_wallclock plans MACs budgets, not search.metric={cfg.search.metric}")
    method = create_method("uniform", create_model(cfg.model.space, gated=True, branches=blocks,
                                                   **data.shape_spec(cfg.model.space)),
                           target=cfg.search.target_abs or cfg.search.target, metric="macs",
                           step=cfg.extract.round_to)
    small = method.extract()
    # distillation's teacher (the fused dense net) runs beside every fine-tuning step: its time counts
    teacher = fuse(dense).eval() if cfg.finetune.distill > 0 else None
    t_small, eval_small = seconds_per_epoch(small, cfg.finetune, data, teacher)
    # the pipeline evaluates twice (the dense net, the final net), the scratch arm once
    dense_epochs = max(1, int((dense_share * budget - eval_dense) / t_dense))
    finetune_epochs = max(1, int((budget - eval_dense - dense_epochs * t_dense - eval_small) / t_small))
    t_scratch, eval_scratch = seconds_per_epoch(build(scratch_spec(small.spec, branches)), cfg.train, data)
    return {"budget_seconds": budget, "dense_epochs": dense_epochs, "finetune_epochs": finetune_epochs,
            "scratch_epochs": max(1, int((budget - eval_scratch) / t_scratch)), "probe_seconds_per_epoch":
            {"dense": t_dense, "final": t_small, "scratch": t_scratch},
            "probe_seconds_per_evaluation": {"dense": eval_dense, "final": eval_small, "scratch": eval_scratch}}


def on_the_clock(tcfg: TrainConfig, planned_epochs: int, seconds: float) -> TrainConfig:
    """``tcfg`` trained for ``seconds`` of wall clock (``minutes``), its planned epochs doubled as
    the upper bound (warm-up doubled with them, so it keeps its share), evaluated after the last."""
    return dataclasses.replace(tcfg, epochs=2 * planned_epochs, warmup_epochs=2 * tcfg.warmup_epochs,
                               minutes=seconds / 60.0, eval_every=0)


def epochs_trained(stage: Path) -> int:
    """Epochs a saved stage trained (on the clock: however many fitted)."""
    return len(json.loads((stage / "report.json").read_text())["history"])


def pipeline_arm(cfg: PipelineConfig, p: dict, data) -> tuple[float, Path]:
    """Dense -> search -> extract -> fine-tune, timed; returns (seconds, finetune dir)."""
    s = cfg.search
    if method_class(s.method).trains:
        raise SystemExit(f"bench_wallclock plans one-shot methods (uniform, eagleeye, l1 ...), not {s.method}")
    # a one-shot method's search epochs go to the fine-tune (stages.finetune_config): take them back out
    tuned = max(1, p["finetune_epochs"] - s.epochs)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=p["dense_epochs"], eval_every=0),
                              search=dataclasses.replace(s, compare=None))
    started = time.perf_counter()
    stages.train_stage(cfg, data=data)
    stages.search_stage(cfg, data=data)
    stages.extract_stage(cfg)
    # the fine-tune runs on the clock (finetune.minutes): what is left of T, less its final evaluation, so
    # that a machine slower than at the probe cannot make the pipeline overrun T (a 4.26 s probe and 4.7 s
    # epochs once gave SR's pipeline 32.9 of 30 minutes); its planned epochs, doubled, are only an upper bound
    left = p["budget_seconds"] - (time.perf_counter() - started) - p["probe_seconds_per_evaluation"]["final"]
    if left <= 0:
        raise SystemExit(f"the dense stage and the search used all of T ({p['budget_seconds'] / 60:g} min): "
                         "lower --dense-share")
    cfg = dataclasses.replace(cfg, finetune=on_the_clock(cfg.finetune, tuned, left))
    out = stages.finetune_stage(cfg, data=data)
    return time.perf_counter() - started, out


def scratch_arm(cfg: PipelineConfig, widths_from: Path, p: dict, data,
                branches: list[str] | None = None) -> tuple[float, Path]:
    """The final net's widths (other blocks if ``branches``), fresh weights, the dense recipe, on
    the clock (T less its final evaluation; its planned epochs, doubled, only bound it); timed."""
    torch.manual_seed(cfg.seed)
    fresh = build(scratch_spec(load_model(widths_from).spec, branches))
    left = p["budget_seconds"] - p["probe_seconds_per_evaluation"]["scratch"]
    tcfg = on_the_clock(cfg.train, p["scratch_epochs"], left)
    started = time.perf_counter()
    model, report = run_training(cfg, "finetune", fresh, tcfg, False, data=data)
    seconds = time.perf_counter() - started
    return seconds, save_stage(model, stages.stage_dir(cfg, "finetune"), report, cfg)


def scored(cfg: PipelineConfig, data) -> dict:
    """Fuse and export (float ONNX) the run's fine-tuned net: its ONNX metrics, latency, MACs."""
    stages.fuse_stage(cfg)
    export = stages.export_stage(cfg, data=data, formats=["onnx"], int8=False)
    r = json.loads((export / "report.json").read_text())
    return {"metric": r["onnx_metrics"], "latency_ms": r["latency"]["median_ms"], "macs": r["macs"],
            "widths": r["widths"]}


def table(rows: list[dict], primary: str) -> str:
    lines = [f"| T (min) | arm | {primary} (mean ± std, n) | wall minutes (mean) | epochs (dense + final / scratch)"
             " | MACs | ONNX latency (ms) |", "|---|---|---|---|---|---|---|"]
    def arm_of(r: dict) -> tuple:
        return r["minutes"], r["arm"], r.get("dense_share", 0.0), r.get("distill", 0.0), "+".join(r.get("blocks") or [])

    arms = sorted({arm_of(r) for r in rows}, key=lambda a: (a[0], a[1] == "pipeline", a[1], a[2], a[3], a[4]))
    for minutes, arm, share, distill, blocks in arms:
        got = [r for r in rows if arm_of(r) == (minutes, arm, share, distill, blocks)]
        values = [r["metric"][primary] for r in got]
        epochs = ", ".join(sorted({f"{r['epochs']['dense']} + {r['epochs']['final']}" if arm == "pipeline"
                                   else str(r["epochs"]["final"]) for r in got}))
        name = (f"pipeline, dense share {share:g}" + (f", distill {distill:g}" if distill else "")
                + (f", {blocks} blocks" if blocks else "") if arm == "pipeline" else arm)
        lines.append(f"| {minutes:g} | {name} | {cell(values, count=True)} | "
                     f"{statistics.fmean(r['seconds'] for r in got) / 60:.1f} | {epochs} | "
                     f"{got[0]['macs'] / 1e6:.3f} M | {statistics.fmean(r['latency_ms'] for r in got):.3f} |")
    return "\n".join(lines)


def main() -> None:
    from repas.cli.main import configure_logging

    configure_logging()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--name", required=True, help="names docs/wallclock_<name>.md and .json")
    p.add_argument("--minutes", default="10,20")
    seeds_arg(p, "0")
    p.add_argument("--dense-share", type=float, default=0.4, help="share of T for the dense supernet")
    p.add_argument("--scratch-branches", default=None,
                   help="blocks of the scratch net, e.g. conv or conv_plain (default: the pipeline's own)")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--docs", default="docs")
    args = p.parse_args()
    root = Path("runs") / f"wallclock-{args.name}"
    store = RowStore(root / "wallclock.json")
    rows = store.rows
    for r in rows:  # rows written before --dense-share and distillation were recorded used the defaults
        if r["arm"] == "pipeline":
            r.setdefault("dense_share", 0.4)
            r.setdefault("distill", 0.0)
            r.setdefault("blocks", None)
    configured = load_config(args.config, args.set)
    distill = configured.finetune.distill
    blocks = configured.model.branches  # the pipeline's block, when not the space's
    # the scratch net's block: --scratch-branches, else the pipeline's own, so that a plain-block run's scratch
    # arm is named for its block and never taken for (or skipped because of) a space-block scratch row
    branches = args.scratch_branches.split(",") if args.scratch_branches else blocks
    scratch = f"scratch, {'+'.join(branches)} blocks" if branches else "scratch"

    def have(arm: str, minutes: float, seed: int) -> bool:
        return any((r["arm"], r["minutes"], r["seed"]) == (arm, minutes, seed)
                   and (arm != "pipeline" or (r["dense_share"], r["distill"], r["blocks"])
                        == (args.dense_share, distill, blocks))
                   for r in rows)

    def keep(row: dict) -> None:
        nonlocal rows
        same = ("arm", "minutes", "seed", "dense_share", "distill", "blocks")
        rows = [r for r in rows if any(r.get(k) != row.get(k) for k in same)] + [row]
        store.doc["rows"] = rows
        store.save()

    for minutes in (float(m) for m in args.minutes.split(",")):
        for seed in args.seeds:
            if have("pipeline", minutes, seed) and have(scratch, minutes, seed):
                continue
            base = load_config(args.config, [*args.set, f"seed={seed}"])
            data = stages.get_data(base)
            # the scratch arm does not depend on the dense share: one per (T, seed), shared by every share
            run = root / f"T{minutes:g}-seed{seed}"
            variant = (f"-share{args.dense_share:g}" if args.dense_share != 0.4 else "") + (
                f"-distill{distill:g}" if distill else "") + (f"-blocks{'+'.join(blocks)}" if blocks else "")
            share_run = root / f"T{minutes:g}{variant}-seed{seed}" if variant else run
            epochs = plan(base, minutes, args.dense_share, data, branches)
            print(f"T={minutes:g} min, seed {seed}, dense share {args.dense_share:g}: {epochs}", flush=True)
            common = {"minutes": minutes, "seed": seed, "method": base.search.method, "date": time.strftime("%Y-%m-%d"),
                      "probe_seconds_per_epoch": epochs["probe_seconds_per_epoch"],
                      "probe_seconds_per_evaluation": epochs["probe_seconds_per_evaluation"]}
            pipe_cfg = dataclasses.replace(base, run_dir=str(share_run / "pipeline"))
            if not have("pipeline", minutes, seed):
                seconds, tuned = pipeline_arm(pipe_cfg, epochs, data)
                keep({**common, "arm": "pipeline", "dense_share": args.dense_share, "distill": distill,
                      "blocks": blocks, "seconds": seconds, "on_the_clock": True,
                      **scored(pipe_cfg, data),
                      "epochs": {"dense": epochs["dense_epochs"], "final": epochs_trained(tuned)}})
            if not have(scratch, minutes, seed):
                tuned = stages.stage_dir(pipe_cfg, "finetune")
                where = run / ("scratch" if not branches else f"scratch-{'+'.join(branches)}")
                scratch_cfg = dataclasses.replace(base, run_dir=str(where))
                seconds, out = scratch_arm(scratch_cfg, tuned, epochs, data, branches)
                keep({**common, "arm": scratch, "seconds": seconds, "on_the_clock": True, **scored(scratch_cfg, data),
                      "epochs": {"dense": 0, "final": epochs_trained(out)}})
            got = {r["arm"]: r for r in rows if r["minutes"] == minutes and r["seed"] == seed
                   and (r.get("dense_share"), r.get("distill"), r.get("blocks"))
                   in ((None, None, None), (args.dense_share, distill, blocks))}
            print(f"T={minutes:g} seed {seed}: pipeline {got['pipeline']['metric']} in "
                  f"{got['pipeline']['seconds'] / 60:.1f} min, {scratch} {got[scratch]['metric']} in "
                  f"{got[scratch]['seconds'] / 60:.1f} min", flush=True)
    primary = stages.get_data(configured).primary if rows else "top1"
    top = (header(f"{torch.get_num_threads()} threads") + "\n(the latest run; earlier rows, other seeds, dense "
           f"shares or scratch blocks, are kept)\n\nConfig `{args.config}`; method `{configured.search.method}`. The "
           "last training of each arm runs on the clock (rows with `on_the_clock` in the JSON; older rows had "
           "epochs planned from one timed epoch of each net).\n\n")
    text = top + table(rows, primary) + "\n"
    docs = Path(args.docs)
    atomic_write_text(docs / f"wallclock_{args.name}.md", text)
    atomic_write_json(docs / f"wallclock_{args.name}.json", {"rows": rows})
    print(text)


if __name__ == "__main__":
    main()
