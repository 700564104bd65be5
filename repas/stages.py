"""The pipeline's stages, each one public function that reads and writes model directories.

train -> search -> extract -> finetune -> fuse -> export. Every stage reads the directory
of the stage before it (``source``, by default ``<run_dir>/<previous stage>``) and writes
``spec.json`` + ``weights.safetensors`` + ``report.json`` into its own, so any stage can
be rerun or resumed alone. ``run_pipeline`` runs them all and writes ``report.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from repas import distributed
from repas.atomic import atomic_write_json, atomic_write_text
from repas.config import PipelineConfig, TrainConfig
from repas.deploy import cpu_name, onnx_latency_each
from repas.deploy.profile import profile, table_from_device
from repas.errors import Interrupted, RepasError
from repas.search import (
    Budget,
    LatencyModel,
    Trainer,
    allocate_masks,
    analytic_cost,
    extract_subnet,
    fit_masks_to_budget,
    gate_masks,
    gate_scores,
    gated_copy,
    resolve_target,
    round_masks,
    spec_cost,
    threshold_masks,
)
from repas.search.baselines import apply_masks, make_regularizer, method_masks
from repas.search.cost import CostFn, format_cost
from repas.search.regularizers import Regularizer
from repas.search.tolerance import shrinking_targets, tolerance_search
from repas.search.trainer import CHECKPOINT
from repas.spec import ArchSpec
from repas.supernet import RepNet, build, fuse_net, load_model, save_model
from repas.task_data import TaskData, make_task_data, shaped_spec

STAGES = ("train", "search", "extract", "finetune", "fuse", "export")
Log = Callable[[str], None]


def _print(message: str) -> None:
    if distributed.is_main():  # under torchrun, one process speaks
        print(message, flush=True)  # progress lines must reach a log file as they happen


Resume = bool | str  # False, True (the stage's checkpoint must exist) or "auto"


def stage_complete(cfg: PipelineConfig, stage: str, tcfg: TrainConfig, source: Path | None = None) -> bool:
    """What ``--resume auto`` skips: the stage's output, saved after its last checkpoint,
    trained with the same recipe (``tcfg``), and newer than its ``source`` stage's output."""
    out = stage_dir(cfg, stage)
    report, ckpt = out / "report.json", out / CHECKPOINT
    if not (report.exists() and (out / "weights.safetensors").exists()):
        return False
    if ckpt.exists() and report.stat().st_mtime_ns < ckpt.stat().st_mtime_ns:
        return False
    if source is not None and not _newer(out, source):
        return False
    saved = json.loads(report.read_text()).get("config", {})
    now = dataclasses.asdict(tcfg)
    return all(saved.get(k) == v for k, v in now.items() if k != "checkpoint_every")


def resolve_resume(resume: Resume, cfg: PipelineConfig, stage: str, tcfg: TrainConfig, source: Path | None,
                   log: Log) -> bool | None:
    """What ``--resume auto`` means for a training stage: None when its output is complete
    (skip it), True when its checkpoint can be continued, False to start it. A checkpoint
    older than the source stage's output was made from another net: the stage starts over."""
    if resume != "auto":
        return bool(resume)
    if stage_complete(cfg, stage, tcfg, source):
        log(f"{stage}: complete in {stage_dir(cfg, stage)}, skipped (--resume auto)")
        return None
    ckpt = stage_dir(cfg, stage) / CHECKPOINT
    if not ckpt.exists():
        return False
    stale = source is not None and (source / "report.json").exists() and \
        (source / "report.json").stat().st_mtime_ns > ckpt.stat().st_mtime_ns
    if stale:
        log(f"{stage}: {ckpt} is older than {source}: starting the stage over (--resume auto)")
    return not stale


def _newer(out: Path, source: Path) -> bool:
    """``out`` was written after ``source`` (both stage directories with a report.json)."""
    mine, theirs = out / "report.json", source / "report.json"
    return mine.exists() and (not theirs.exists() or theirs.stat().st_mtime_ns <= mine.stat().st_mtime_ns)


def _save_trained(model: RepNet, out: Path, report: dict[str, Any]) -> Path:
    """Rank 0 saves a training stage's model; every process waits for it. A stage that a
    signal reached in its last epoch is saved complete, and then the run stops."""
    if distributed.is_main():
        save_model(model, out, report)
    distributed.barrier()
    if report.get("stopped_by_signal"):
        raise Interrupted(report["stopped_by_signal"], f"after the {report['stage']} stage; its output is saved")
    return out


def stage_dir(cfg: PipelineConfig, stage: str) -> Path:
    return Path(cfg.run_dir) / stage


def _source(cfg: PipelineConfig, stage: str, source: str | Path | None) -> Path:
    if source is not None:
        return Path(source)
    previous = STAGES[STAGES.index(stage) - 1]
    path = stage_dir(cfg, previous)
    if not (path / "spec.json").exists():
        raise RepasError(f"{stage} needs the output of '{previous}' at {path}: run 'repas {previous}' "
                         f"first, or name a model directory with --from DIR")
    return path


def setup(cfg: PipelineConfig) -> None:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)


def get_data(cfg: PipelineConfig) -> TaskData:
    """The configured data with its task (classification or super-resolution)."""
    return make_task_data(cfg)


def check_input(spec: ArchSpec, batch: int = 4) -> torch.Tensor:
    """A random input for equality checks: the spec's size, or a small LR tile for SR nets
    (fully convolutional, so any size checks the same weights)."""
    size = (36, 44) if spec.task == "super-resolution" else spec.input_size
    return torch.randn(batch, spec.in_channels, *size)


def model_facts(model: RepNet) -> dict[str, Any]:
    return {"spec": model.spec.name, "widths": model.spec.widths, "macs": spec_cost(model.spec, "macs"),
            "params": spec_cost(model.spec, "params")}


def _environment() -> dict[str, Any]:
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(), "processor": cpu_name(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def _train(cfg: PipelineConfig, stage: str, model: RepNet, tcfg: TrainConfig, resume: Resume, log: Log,
           budget: Budget | None = None, gate_lr: float | None = None,
           data: TaskData | None = None, regularizer: Regularizer | None = None) -> tuple[RepNet, dict[str, Any]]:
    data = data or get_data(cfg)
    train, test = data.train_loader(tcfg), data.eval_batches(tcfg)
    out = stage_dir(cfg, stage)
    task = data.task(tcfg, model.spec)
    trainer = Trainer(model, task, tcfg, out, budget=budget, gate_lr=gate_lr, log=log, regularizer=regularizer)
    started = time.perf_counter()
    trainer.fit(train, test, resume=bool(resume))
    # a search keeps its raw gates (a baseline's gates are its masks)
    final = trainer.eval_model if budget is None and regularizer is None else model
    metrics = trainer.evaluate(test, final)
    final.cpu()
    report = {"stage": stage, **model_facts(final), "test": metrics, "seconds": time.perf_counter() - started,
              "history": trainer.history, "config": dataclasses.asdict(tcfg), "environment": _environment()}
    if trainer.stopping():  # the signal came in the last epoch: the stage is saved, then the run stops
        report["stopped_by_signal"] = trainer.stopping()
    return final, report


def train_stage(cfg: PipelineConfig, resume: Resume = False, log: Log = _print, data: TaskData | None = None) -> Path:
    """Train the dense supernet (gates frozen at all-on)."""
    setup(cfg)
    resume = resolve_resume(resume, cfg, "train", cfg.train, None, log)
    if resume is None:
        return stage_dir(cfg, "train")
    data = data or get_data(cfg)
    model = build(shaped_spec(cfg, data))
    model.freeze_gates()
    model, report = _train(cfg, "train", model, cfg.train, resume, log, data=data)
    return _save_trained(model, stage_dir(cfg, "train"), report)


def latency_table_path(cfg: PipelineConfig) -> Path:
    return Path(cfg.search.latency_table) if cfg.search.latency_table else Path(cfg.run_dir) / "latency.csv"


def cost_model(cfg: PipelineConfig, spec: ArchSpec, metric: str) -> CostFn:
    """The cost of ``spec`` as a function of its widths: MACs, params, or the latency
    model over the configured latency table."""
    return LatencyModel.load(latency_table_path(cfg), spec) if metric == "latency" else analytic_cost(spec, metric)


def width_step(cfg: PipelineConfig, model: CostFn) -> int:
    """The multiple widths are rounded to: extract.round_to, or the latency table's divisor
    where round_to is 1 and the cost is latency (its grid points are measured, not interpolated)."""
    if cfg.extract.round_to == 1 and isinstance(model, LatencyModel):
        return model.divisor
    return cfg.extract.round_to


def profile_stage(cfg: PipelineConfig, out: str | Path | None = None, data: TaskData | None = None,
                  from_device: str | Path | None = None, log: Log = _print) -> Path:
    """Measure the latency table of the configured space on ``cfg.profile.backend``, or
    build it from micro-models timed on another device (``from_device``)."""
    setup(cfg)
    if from_device is not None:
        table = table_from_device(from_device)
        spec = ArchSpec.from_dict(json.loads((Path(from_device) / "plan.json").read_text())["spec"])
    else:
        data = data or get_data(cfg)
        spec = shaped_spec(cfg, data)
        p = cfg.profile
        table = profile(spec, p.backend, p.divisor, cfg.export.threads, p.warmup, p.runs, p.passes)
    path = table.save(out or latency_table_path(cfg))
    log(f"profile: {len(table)} rows for {spec.name} on {table.meta['backend']} ({table.meta['threads']} thread), "
        f"overhead {table.overhead:.4f} ms -> {path}")
    return path


def search_budget(cfg: PipelineConfig, model: RepNet) -> Budget:
    s = cfg.search
    fraction = None if s.target_abs is not None else s.target
    fn = cost_model(cfg, model.spec, s.metric)
    target = resolve_target(model.spec, s.metric, fraction, s.target_abs, fn)
    return Budget(model.spec, target, s.metric, s.alpha, fn)


def search_stage(cfg: PipelineConfig, source: str | Path | None = None, resume: Resume = False,
                 log: Log = _print, data: TaskData | None = None) -> Path:
    """Learn the gates of a (trained) supernet under the budget."""
    setup(cfg)
    resume = resolve_resume(resume, cfg, "search", cfg.search, _source(cfg, "search", source), log)
    if resume is None:
        return stage_dir(cfg, "search")
    model = load_model(_source(cfg, "search", source))
    if not any(g is not None for g in model.gate_modules()):
        raise RepasError(f"{model.spec.name} has no gated layer: search needs a supernet spec")
    method = cfg.search.method
    model.freeze_gates(method != "pas")
    if cfg.search.max_drop is not None:
        if distributed.is_distributed():
            raise RepasError("the error-tolerance search (search.max_drop) runs in one process: launch it without "
                             "torchrun")
        model, report, budget = tolerance_search_stage(cfg, model, log, data or get_data(cfg))
        return _save_search(cfg, model, report, budget)
    budget = search_budget(cfg, model)
    log(f"search ({method}): target {budget.metric} {format_cost(budget.target, budget.metric)} "
        f"(dense {format_cost(float(budget.cost(model.spec.widths)), budget.metric)})")
    if method == "pas":
        model, report = _train(cfg, "search", model, cfg.search, resume, log, budget=budget,
                               gate_lr=cfg.search.gate_lr, data=data)
    else:
        model, report = baseline_search(cfg, model, budget, resume, log, data or get_data(cfg))
    return _save_search(cfg, model, report, budget)


def _save_search(cfg: PipelineConfig, model: RepNet, report: dict[str, Any], budget: Budget) -> Path:
    widths = [int(m.sum()) for m in gate_masks(model)]
    report.update({"target": budget.target, "metric": budget.metric, "method": cfg.search.method,
                   "searched_widths": widths, f"searched_{budget.metric}": float(budget.cost(widths))})
    return _save_trained(model, stage_dir(cfg, "search"), report)


def tolerance_search_stage(cfg: PipelineConfig, model: RepNet, log: Log, data: TaskData
                           ) -> tuple[RepNet, dict[str, Any], Budget]:
    """Error-tolerance mode: the smallest net whose validation metric (after extraction, before
    fine-tuning) is within ``search.max_drop`` of the dense net's. Targets shrink by
    ``search.shrink`` a round; PaS searches ``round_epochs`` a round, continuing from the last
    round; a baseline runs its method at each target from the trained net. Every round's net
    is then trained ``round_epochs`` at its masks to recover before it is validated. Returns the
    net of the last round within the drop (the trained net if none was), its report, and its
    budget, whose target the extract stage then meets with the very masks evaluated here."""
    s = cfg.search
    fn = cost_model(cfg, model.spec, s.metric)
    dense = float(fn(model.spec.widths))
    step = width_step(cfg, fn)
    val, task = data.val_batches(s), data.task(s, model.spec)
    round_cfg = dataclasses.replace(s, epochs=s.round_epochs)
    root = stage_dir(cfg, "search")
    trained = copy.deepcopy(model)
    started = time.perf_counter()

    def validate(net: RepNet) -> float:
        return task.evaluate(fuse_net(net.eval()), val)[data.primary]

    def run_round(target: float) -> tuple[list[int], float, float, RepNet] | None:
        out = root / f"round-{len(rounds_run) + 1}"
        rounds_run.append(target)
        budget = Budget(model.spec, target, s.metric, s.alpha, fn)
        if s.method == "pas":  # PaS continues: each round tightens the same search
            Trainer(model, task, round_cfg, out, budget=budget, gate_lr=s.gate_lr, log=log).fit(data.train_loader(s))
            net = copy.deepcopy(model.cpu())
        else:
            sub_cfg = dataclasses.replace(cfg, run_dir=str(out), search=round_cfg)
            net, _ = baseline_search(sub_cfg, copy.deepcopy(trained), budget, False, log, data)
        # Prune, then recover (Play-and-Prune): the round's net is cut where its gates are
        # (widths rounded to the step; no fit to the target: a fit would cut channels the
        # search kept or switch back on ones it switched off), then trained at those masks for
        # round_epochs, the same for every method, before it is judged on validation.
        net.eval()
        scores = gate_scores(net)
        apply_masks(net, round_masks(gate_masks(net), scores, step), scores)
        Trainer(net, task, round_cfg, out / "recover", log=log).fit(data.train_loader(s))
        sub = extract_subnet(net.cpu().eval(), gate_masks(net))
        return sub.spec.widths, float(fn(sub.spec.widths)), validate(sub), net

    rounds_run: list[float] = []
    reference = validate(trained)
    log(f"search ({s.method}, error tolerance): dense validation {data.primary} {reference:.4g}, allowed drop "
        f"{s.max_drop:g}; targets shrink by {s.shrink:g} a round from {format_cost(dense, s.metric)}")
    state, best, rounds = tolerance_search(reference, shrinking_targets(dense, s.shrink, s.min_target), run_round,
                                           s.max_drop, log)
    net = state if state is not None else trained
    # the extract stage meets this target with the round's own masks (their cost is in the band)
    target = best.cost if best is not None else dense
    broke = rounds[-1] if rounds and not rounds[-1].within else None
    report = {"stage": "search", **model_facts(net), "seconds": time.perf_counter() - started,
              "environment": _environment(), "config": dataclasses.asdict(s),
              "tolerance": {"metric": data.primary, "reference": reference, "max_drop": s.max_drop,
                            "accepted": best.as_dict() if best else None,
                            "broke": broke.as_dict() if broke else None,
                            "rounds": [r.as_dict() for r in rounds]}}
    if best is None:
        log("search: no round stayed within the drop; the result is the dense net")
    return net, report, Budget(model.spec, target, s.metric, s.alpha, fn)


def searched_masks(model: RepNet, budget: Budget, step: int, cfg: PipelineConfig) -> list[torch.Tensor]:
    """The masks the extract stage cuts by: the gates' masks rounded to ``step`` channels and,
    with extract.fit, moved by gate ranking until the cost meets the budget's target."""
    masks, scores = gate_masks(model), gate_scores(model)
    masks = round_masks(masks, scores, step)
    if cfg.extract.fit:
        masks = fit_masks_to_budget(model.spec, masks, scores, budget.target, budget.metric, step=step,
                                    tolerance=cfg.extract.tolerance, model=budget.model)
        fitted = float(budget.cost([int(m.sum()) for m in masks]))
        if fitted > budget.target * (1 + 1e-9):
            raise RepasError(f"widths in steps of {step} cannot meet the target {budget.metric} "
                             f"{format_cost(budget.target, budget.metric)} (the closest is "
                             f"{format_cost(fitted, budget.metric)}): lower --round-to or raise the target")
    return masks


def baseline_search(cfg: PipelineConfig, model: RepNet, budget: Budget, resume: Resume, log: Log,
                    data: TaskData) -> tuple[RepNet, dict[str, Any]]:
    """A baseline method's masks, written into the supernet's gates: slimming, oicsr, admm
    and correlation first train for search.epochs with their regulariser; the others prune
    the trained net as it is (the report says how long that took)."""
    s = cfg.search
    step = width_step(cfg, budget.model)
    started = time.perf_counter()
    regularizer = make_regularizer(s.method, model, budget, step, cfg.extract.tolerance, s.strength,
                                   len(data.train_loader(s)), s.epochs)
    report: dict[str, Any] = {"stage": "search"}
    if regularizer is not None:
        model, report = _train(cfg, "search", model, s, resume, log, data=data, regularizer=regularizer)
    inputs = None
    if s.method == "lasso":
        size = model.spec.input_size if model.spec.task != "super-resolution" else (48, 48)
        n = 256 if model.spec.task != "super-resolution" else 16
        inputs = torch.cat(data.calibration_inputs((1, model.spec.in_channels, *size), n))
    masks, scores = method_masks(s.method, model, budget, step, cfg.extract.tolerance, regularizer, inputs)
    apply_masks(model, masks, scores)
    if regularizer is None:
        report.update({**model_facts(model), "seconds": time.perf_counter() - started,
                       "environment": _environment()})
    log(f"search ({s.method}): widths {[int(m.sum()) for m in masks]}")
    return model, report


def extract_stage(cfg: PipelineConfig, source: str | Path | None = None, log: Log = _print,
                  target_from_search: bool = True) -> Path:
    """Gates -> widths (rounded, fitted to the target) -> a smaller net with inherited weights.

    The target is the one the search ran with (its report.json), unless
    ``target_from_search`` is False or the source has no report: then the config's."""
    setup(cfg)
    src = _source(cfg, "extract", source)
    model = load_model(src).eval()
    threshold_widths = [int(m.sum()) for m in gate_masks(model)]
    searched = json.loads((src / "report.json").read_text()) if (src / "report.json").exists() else {}
    if target_from_search and "target" in searched:
        metric = searched["metric"]
        budget = Budget(model.spec, float(searched["target"]), metric, cfg.search.alpha,
                        cost_model(cfg, model.spec, metric))
    else:
        budget = search_budget(cfg, model)
    step = width_step(cfg, budget.model)
    masks = searched_masks(model, budget, step, cfg)
    sub, diff = extract_checked(model, masks)
    cost = float(budget.cost(sub.spec.widths))
    report = {"stage": "extract", **model_facts(sub), "threshold_widths": threshold_widths,
              "target": budget.target, "metric": budget.metric, "cost_vs_target": cost / budget.target,
              f"predicted_{budget.metric}": cost, "max_rel_diff_vs_gated_supernet": diff, "round_to": step}
    log(f"extract: widths {sub.spec.widths}, {budget.metric} {format_cost(cost, budget.metric)} = "
        f"{cost / budget.target:.3f} x target")
    return save_model(sub, stage_dir(cfg, "extract"), report)


def extract_checked(model: RepNet, masks: list[torch.Tensor]) -> tuple[RepNet, float]:
    """The extracted net and its max abs difference from the gated supernet, relative to
    the output's largest value (an error above 1e-5): channels a search switched off and
    an allocation keeps can make outputs of 1e6, where float32 rounds at 1e-1."""
    sub = extract_subnet(model, masks)
    x = check_input(model.spec)
    with torch.no_grad():
        ref = gated_copy(model, masks).eval()(x)
        diff = float((sub(x) - ref).abs().max() / ref.abs().max().clamp_min(1.0))
    if diff > 1e-5:
        raise RepasError(f"extracted net differs from the gated supernet by {diff:.2e} (relative): please report "
                         "this bug")
    return sub, diff


def target_metric(text: str, default: str) -> str:
    """'1.5ms' / '800us' is a latency target; a plain number or '2.5M' is in ``default``."""
    return "latency" if str(text).strip().lower().endswith("s") else default


def targets_stage(cfg: PipelineConfig, targets: list[str], source: str | Path | None = None,
                  finetune: bool = False, data: TaskData | None = None, log: Log = _print) -> Path:
    """Many subnets from one searched supernet: for each target, widths allocated from the
    gate ranking (``cfg.extract.allocation``), extracted into ``<run_dir>/targets/<target>/extract``;
    with ``finetune``, each is also fine-tuned, fused and exported, and its latency measured.
    Writes ``<run_dir>/targets/report.md`` with predicted and measured latency."""
    setup(cfg)
    src = _source(cfg, "extract", source)
    model = load_model(src).eval()
    if not any(g is not None for g in model.gate_modules()):
        raise RepasError(f"{src} has no gates: --targets needs a searched supernet (the search stage's output)")
    scores = gate_scores(model)
    allocate = allocate_masks if cfg.extract.allocation == "ranked" else threshold_masks
    root = Path(cfg.run_dir) / "targets"
    plans = []
    for text in targets:  # each names a directory
        if not re.fullmatch(r"[\w.]+", str(text).strip()):
            raise RepasError(f"target {text!r} names a directory under {root}: write it as e.g. 1.5ms, 800us or 2.5M")
    for text in targets:  # resolve every target before the long part, so a bad one fails fast
        metric = target_metric(text, cfg.search.metric)
        fn = cost_model(cfg, model.spec, metric)
        plans.append((str(text).strip(), metric, fn, resolve_target(model.spec, metric, absolute=text, model=fn)))
    latency = LatencyModel.load(latency_table_path(cfg), model.spec) if latency_table_path(cfg).exists() else None
    rows = []
    for label, metric, fn, target in plans:
        masks = allocate(model.spec, scores, target, fn, width_step(cfg, fn))
        sub, diff = extract_checked(model, masks)
        cost = float(fn(sub.spec.widths))
        sub_cfg = dataclasses.replace(cfg, run_dir=str(root / label))
        row = {"target": label, "metric": metric, "target_value": target, "allocation": cfg.extract.allocation,
               **model_facts(sub), f"predicted_{metric}": cost, "cost_vs_target": cost / target,
               "predicted_latency_ms": float(latency(sub.spec.widths)) if latency else None}
        save_model(sub, stage_dir(sub_cfg, "extract"), {"stage": "extract", **row,
                                                         "max_rel_diff_vs_gated_supernet": diff})
        log(f"extract {label}: widths {sub.spec.widths}, {metric} {format_cost(cost, metric)} = "
            f"{cost / target:.3f} x target")
        if finetune:
            data = data or get_data(cfg)
            finetune_stage(sub_cfg, data=data, log=log)
            fuse_stage(sub_cfg, log=log)
            export_stage(sub_cfg, data=data, log=log)
            exported, tuned = _read(stage_dir(sub_cfg, "export")), _read(stage_dir(sub_cfg, "finetune"))
            row.update({"measured_latency_ms": exported["latency"]["median_ms"], "onnx_metrics":
                        exported["onnx_metrics"], "torch_metrics": tuned["test"]})
        rows.append(row)
    report = {"source": str(src), "allocation": cfg.extract.allocation, "subnets": rows,
              "threads": cfg.export.threads, "environment": _environment()}
    atomic_write_json(root / "report.json", report)
    atomic_write_text(root / "report.md", targets_markdown(report))
    log("\n" + targets_markdown(report))
    return root


def targets_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"# Subnets of {report['source']} at several targets", "",
             f"{env['date']}, {env['processor']}, torch {env['torch']}; widths by {report['allocation']} allocation; "
             f"measured latency: onnxruntime, batch 1, {report['threads']} thread.", "",
             "| target | widths | MACs | predicted latency | measured latency | measured / target | metric |",
             "|---|---|---|---|---|---|---|"]
    for r in report["subnets"]:
        pred = r.get("predicted_latency_ms")
        meas = r.get("measured_latency_ms")
        ratio = f"{meas / r['target_value']:.3f}" if meas is not None and r["metric"] == "latency" else "-"
        metric = ", ".join(f"{k} {v:.2f}" for k, v in (r.get("onnx_metrics") or {}).items() if k in ("top1", "psnr"))
        lines.append(f"| {r['target']} | {' / '.join(map(str, r['widths']))} | {r['macs'] / 1e6:.3f} M | "
                     f"{f'{pred:.4g} ms' if pred is not None else '-'} | "
                     f"{f'{meas:.4g} ms' if meas is not None else '-'} | {ratio} | {metric or '-'} |")
    return "\n".join(lines) + "\n"


def finetune_stage(cfg: PipelineConfig, source: str | Path | None = None, resume: Resume = False,
                   log: Log = _print, data: TaskData | None = None) -> Path:
    """Train the extracted (physically smaller) multi-branch net."""
    setup(cfg)
    resume = resolve_resume(resume, cfg, "finetune", cfg.finetune, _source(cfg, "finetune", source), log)
    if resume is None:
        return stage_dir(cfg, "finetune")
    model = load_model(_source(cfg, "finetune", source))
    model, report = _train(cfg, "finetune", model, cfg.finetune, resume, log, data=data)
    return _save_trained(model, stage_dir(cfg, "finetune"), report)


def fuse_stage(cfg: PipelineConfig, source: str | Path | None = None, out: str | Path | None = None,
               log: Log = _print) -> Path:
    """Fold BN and fuse branches: a plain conv/ReLU stack, checked against the original."""
    setup(cfg)
    model = load_model(_source(cfg, "fuse", source)).eval()
    fused = fuse_net(model)
    x = check_input(model.spec)
    with torch.no_grad():
        ref = model(x)
        rel = float((fused(x) - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    if rel > 1e-4:
        raise RepasError(f"fused net differs from the multi-branch net by {rel:.2e} (relative): please report")
    report = {"stage": "fuse", **model_facts(fused), "max_rel_diff_vs_multibranch": rel}
    log(f"fuse: {len(fused.blocks)} plain convs, max relative difference {rel:.1e}")
    return save_model(fused, out or stage_dir(cfg, "fuse"), report)


def export_formats(cfg: PipelineConfig) -> list[str]:
    """The configured formats; by default onnx, plus pte where ExecuTorch is installed."""
    if cfg.export.formats:
        return list(cfg.export.formats)
    from repas.deploy.executorch_export import executorch_available

    return ["onnx", "pte"] if executorch_available() else ["onnx"]


def export_shape(cfg: PipelineConfig, spec: ArchSpec) -> tuple[int, ...]:
    """The static input shape of the exported files: batch 1 at the spec's input size, or
    for SR the configured LR tile."""
    tile = cfg.export.tile if spec.task == "super-resolution" and cfg.export.tile else spec.input_size
    return (1, spec.in_channels, *tile)


def export_stage(cfg: PipelineConfig, source: str | Path | None = None, out: str | Path | None = None,
                 data: TaskData | None = None, log: Log = _print, formats: list[str] | None = None,
                 int8: bool | None = None) -> Path:
    """The deployment bundle: the fused net as .onnx / .pte files (float, and int8
    calibrated on training inputs) at a static batch-1 shape, each float file checked
    against PyTorch, every file scored on the test split through the runner ``repas
    predict`` uses and timed on its runtime; ``model.json`` says how to use them."""
    from repas.deploy import export_models, latency_each, write_manifest
    from repas.deploy.bundle import FILES
    from repas.deploy.runner import onnx_runner, pte_runner

    setup(cfg)
    src = _source(cfg, "export", source)
    model = load_model(src).eval()
    spec, e = model.spec, cfg.export
    out = Path(out or stage_dir(cfg, "export"))
    shape = export_shape(cfg, spec)
    formats = formats or export_formats(cfg)
    int8 = e.int8 if int8 is None else int8
    data = data or get_data(cfg)
    calibration = None
    if int8:
        calibration = data.calibration_inputs(shape, e.calibration or (16 if spec.task == "super-resolution" else 256))
    if "pte" in formats:  # XNNPACK's threadpool is sized before the first program runs
        from repas.deploy.executorch_export import set_executorch_threads

        set_executorch_threads(e.threads)
    made = export_models(model, out, shape, formats, calibration, log=log)
    for (fmt, precision), name in FILES.items():  # files of an earlier export this one did not make
        if precision not in made["files"].get(fmt, {}):
            (out / name).unlink(missing_ok=True)
    runners = {}
    for fmt, files in made["files"].items():
        for precision, name in files.items():
            path = out / name
            runners[f"{fmt} {precision}"] = ((lambda p=path: onnx_runner(p, e.threads)) if fmt == "onnx"
                                              else (lambda p=path: pte_runner(p)))
    metrics = {k: data.score(make(), spec, shape) for k, make in runners.items()}
    times = latency_each(runners, shape, e.warmup, e.runs)
    for k in runners:
        shown = ", ".join(f"{m} {v:.4g}" for m, v in metrics[k].items())
        log(f"export: {k}: {shown}, latency {times[k]:.3f} ms at {'x'.join(map(str, shape[2:]))} "
            f"({e.threads} thread)")
    facts = model_facts(model)
    runtime = {"onnx": "onnxruntime", "pte": "executorch"}
    latency_ms: dict[str, dict[str, float]] = {}
    for k, v in times.items():
        fmt, precision = k.split()
        latency_ms.setdefault(runtime[fmt], {})[precision] = v
    manifest = {"task": spec.task, "name": spec.name, "input": data.bundle_input(spec, shape),
                **({"scale": spec.scale, "output": "image in [0, 1], scale x the input's height and width"}
                   if spec.task == "super-resolution" else
                   {"labels": data.labels(), "output": "logits, one per label (softmax for probabilities)"}),
                "widths": facts["widths"], "macs": facts["macs"], "params": facts["params"],
                "files": made["files"], "checks": made["checks"], "metrics": metrics, "latency_ms": latency_ms,
                "latency_protocol": {"batch": 1, "input": list(shape), "threads": e.threads, "runs": e.runs,
                                     "warmup": e.warmup, "statistic": "lowest of 5 sessions' medians",
                                     "device": cpu_name()}}
    write_manifest(out, manifest)
    primary = "onnx float" if "onnx float" in metrics else next(iter(metrics))
    latency = {"median_ms": times[primary], "statistic": "lowest of 5 sessions' medians", "runs": e.runs,
               "threads": e.threads}
    report = {"stage": "export", "source": str(src), **facts, "formats": formats,
              "onnx": str(out / FILES["onnx", "float"]) if "onnx" in formats else None,
              "max_abs_diff_onnx_vs_torch": made["checks"].get("onnx_float_max_abs_diff"),
              "onnx_metrics": metrics[primary], "metrics": metrics, "latency": latency, "latency_ms": latency_ms,
              "checks": made["checks"], "latency_input": list(shape), "environment": _environment()}
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "spec.json", spec.to_json() + "\n")
    return out


def run_pipeline(cfg: PipelineConfig, resume: Resume = False, log: Log = _print) -> dict[str, Any] | None:
    """All stages, plus the dense net fused and exported for comparison; writes report.md.
    Under torchrun every process trains, searches and fine-tunes; rank 0 alone extracts,
    fuses, exports and reports (the others return None)."""
    started = time.perf_counter()
    run = Path(cfg.run_dir)
    data = get_data(cfg)
    if cfg.search.metric == "latency" and not latency_table_path(cfg).exists() and distributed.is_main():
        log(f"no latency table at {latency_table_path(cfg)}: measuring one on this machine")
        profile_stage(cfg, data=data, log=log)
    distributed.barrier()
    train_stage(cfg, resume=resume, log=log, data=data)
    search_stage(cfg, resume=resume, log=log, data=data)
    extracted = resume == "auto" and _newer(stage_dir(cfg, "extract"), stage_dir(cfg, "search"))
    if distributed.is_main() and not extracted:  # (auto: an extract newer than its search is kept)
        extract_stage(cfg, log=log)
    distributed.barrier()
    finetune_stage(cfg, resume=resume, log=log, data=data)
    if not distributed.is_main():
        return None
    fuse_stage(cfg, log=log)
    export_stage(cfg, data=data, log=log)
    fuse_stage(cfg, source=run / "train", out=run / "dense-fuse", log=log)
    # the dense net, for the comparison only: float ONNX
    export_stage(cfg, source=run / "dense-fuse", out=run / "dense-export", data=data, log=log, formats=["onnx"],
                 int8=False)
    e = cfg.export
    shape = tuple(_read(run / "export")["latency_input"])
    latency = onnx_latency_each({"dense": run / "dense-export" / "model.onnx",
                                 "searched": run / "export" / "model.onnx"}, shape, e.threads, e.warmup, e.runs)
    latency = {k: {"median_ms": v} for k, v in latency.items()}
    summary = summarize(cfg, latency, time.perf_counter() - started, data.primary, data.baseline())
    atomic_write_json(run / "summary.json", summary)
    atomic_write_text(run / "report.md", summary_markdown(summary))
    log("\n" + summary_markdown(summary))
    return summary


def _read(path: Path) -> dict[str, Any]:
    return json.loads((path / "report.json").read_text())


def summarize(cfg: PipelineConfig, latency: dict[str, dict[str, float]], seconds: float, primary: str,
              baseline: dict[str, float] | None = None) -> dict[str, Any]:
    run = Path(cfg.run_dir)
    train, search, extract = _read(run / "train"), _read(run / "search"), _read(run / "extract")
    finetune = _read(run / "finetune")

    table = latency_table_path(cfg)

    def row(export: dict[str, Any], trained: dict[str, Any], which: str) -> dict[str, Any]:
        predicted = None
        if table.exists():
            spec = ArchSpec.load(run / ("dense-export" if which == "dense" else "export"))
            predicted = float(LatencyModel.load(table, spec)(spec.widths))
        return {"widths": export["widths"], "macs": export["macs"], "params": export["params"],
                "torch": trained["test"][primary], "onnx": export["onnx_metrics"][primary],
                "onnx_ms": latency[which]["median_ms"], "predicted_ms": predicted,
                "metrics": export.get("metrics", {}), "latency_ms": export.get("latency_ms", {})}

    return {
        "run_dir": str(run), "seconds": seconds, "environment": _environment(), "metric": primary,
        "target": extract["target"], "cost_metric": extract["metric"], "cost_vs_target": extract["cost_vs_target"],
        "search_end_widths": search["searched_widths"], "threshold_widths": extract["threshold_widths"],
        "dense": row(_read(run / "dense-export"), train, "dense"),
        "searched": row(_read(run / "export"), finetune, "searched"),
        "baseline": baseline, "threads": cfg.export.threads, "latency_input": _read(run / "export")["latency_input"],
        "tolerance": search.get("tolerance"),
    }


def _bundle_cell(row: dict[str, Any], fmt: str, runtime: str, precision: str, metric: str) -> str:
    """A bundle file's test metric and latency in the report ("-" where it was not made)."""
    key = f"{fmt} {precision}"
    if key not in row.get("metrics", {}):
        return "-"
    return f"{row['metrics'][key][metric]:.2f}, {row['latency_ms'][runtime][precision]:.3f} ms"


def summary_markdown(s: dict[str, Any]) -> str:
    d, p = s["dense"], s["searched"]
    metric = {"top1": "top-1 (%)", "psnr": "PSNR (dB, Y)"}.get(s["metric"], s["metric"])
    size = "x".join(map(str, s["latency_input"][2:]))
    rows = [
        ("widths", " / ".join(map(str, d["widths"])), " / ".join(map(str, p["widths"]))),
        ("MACs", f"{d['macs'] / 1e6:.3f} M", f"{p['macs'] / 1e6:.3f} M ({p['macs'] / d['macs']:.1%} of dense)"),
        ("params", f"{d['params'] / 1e3:.1f} K", f"{p['params'] / 1e3:.1f} K"),
        (f"{metric}, PyTorch", f"{d['torch']:.2f}", f"{p['torch']:.2f}"),
        (f"{metric}, fused ONNX", f"{d['onnx']:.2f}", f"{p['onnx']:.2f}"),
        (f"ONNX latency, batch 1 at {size}, {s['threads']} thread", f"{d['onnx_ms']:.3f} ms",
         f"{p['onnx_ms']:.3f} ms"),
    ]
    for fmt, runtime, name in (("onnx", "onnxruntime", "ONNX"), ("pte", "executorch", "ExecuTorch")):
        for precision in ("float", "int8"):
            if (fmt, precision) != ("onnx", "float") and f"{fmt} {precision}" in p.get("metrics", {}):
                rows.append((f"{metric} and latency, {name} {precision}",
                             *(_bundle_cell(r, fmt, runtime, precision, s["metric"]) for r in (d, p))))
    if d.get("predicted_ms") is not None:
        rows.append(("latency predicted by the table", f"{d['predicted_ms']:.3f} ms", f"{p['predicted_ms']:.3f} ms"))
    env = s["environment"]
    lines = [f"# repas run {s['run_dir']}", "",
             f"{env['date']}, {env['processor']}, torch {env['torch']}, {s['seconds'] / 60:.1f} min in all. "
             f"Target {s['cost_metric']} {format_cost(s['target'], s['cost_metric'])}; the searched net is at "
             f"{s['cost_vs_target']:.3f} x target.", "",
             "| | dense | searched |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    t = s.get("tolerance")
    if t:
        got, broke = t["accepted"], t["broke"]
        text = (f"Error-tolerance search: the smallest net whose validation {t['metric']} (after each round's recovery "
                f"epochs, before fine-tuning) "
                f"stays within {t['max_drop']:g} of the dense net's {t['reference']:.2f}, in "
                f"{len(t['rounds'])} rounds: ")
        text += (f"{got['value']:.2f} (drop {got['drop']:.2f}) at {format_cost(got['cost'], s['cost_metric'])}"
                 if got else "no round stayed within it, so the net is the dense one")
        if broke:
            text += (f"; the next round, at {format_cost(broke['cost'], s['cost_metric'])}, dropped "
                     f"{broke['drop']:.2f}")
        lines += ["", text + "."]
    if s.get("baseline"):
        lines += ["", "Bicubic upscaling on the same images: " +
                  ", ".join(f"{k} {v:.4f}" for k, v in s["baseline"].items()) + "."]
    return "\n".join(lines) + "\n"
