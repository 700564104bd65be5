"""``repas pipeline`` for a CNN of the user's own (``model.builder``): the dense model
trained (or ``model.weights`` loaded), one gate per channel group (``repas.graph``), the
configured method at the configured budget, extraction into the user's own classes,
fine-tuning for the same total epochs as the comparison methods, a pickle-free save
(``pruned/``: ``load_pruned`` rebuilds it), conv+BN folding and the verified bundle
(``export/``, which ``repas predict`` runs). ``search.compare`` methods run beside it from
the same dense weights; report.json holds every result. Classification and denoising data."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repas.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, staged_directory
from repas.config import PipelineConfig
from repas.errors import RepasError
from repas.graph import GatedModel, fuse_user_model, save_pruned
from repas.graph.builders import build_from
from repas.json_files import read_json
from repas.search import create_method
from repas.search.cost import CostFn
from repas.search.graph_latency import GraphLatencyModel
from repas.stages.common import Resume, environment, get_data, latency_table_path, record_config, setup, stage_dir
from repas.stages.methods import sample_inputs
from repas.stages.resume import resolve_resume
from repas.stages.training import finetune_config, run_training
from repas.stages.user_export import export_user_model, open_pruned
from repas.supernet.model_files import load_weights, read_weights, save_weights
from repas.task_data import TaskData

log = logging.getLogger("repas.stages")


def user_model_facts(gated: GatedModel, widths: list[int], latency: CostFn | None = None) -> dict[str, Any]:
    """Group widths, MACs and params of ``gated`` cut to ``widths`` (and the latency that
    ``latency``, a ``GraphLatencyModel``, predicts)."""
    facts = {"spec": gated.spec.name, "widths": widths, "macs": float(gated.cost("macs", widths)),
             "params": float(gated.cost("params", widths))}
    if latency is not None:
        facts["latency"] = float(latency(widths))
    return facts


def user_latency(cfg: PipelineConfig, gated: GatedModel) -> GraphLatencyModel | None:
    """A user model's latency model, over its own table (``repas profile``), for a latency
    budget; None for macs and params (``create_method`` costs those)."""
    if cfg.search.metric != "latency":
        return None
    return GraphLatencyModel.load(latency_table_path(cfg), gated.costs, gated.spec.widths, gated.spec.name)


def dense_model(cfg: PipelineConfig, data: TaskData, resume: Resume = False) -> tuple[nn.Module, dict[str, Any]]:
    """The user's model, built by ``model.builder``, with ``model.weights`` or trained for
    ``train.epochs`` in RUN_DIR/train by the stages' own training (``run_training``), and
    saved there as one step; ``--resume auto`` keeps a complete one (the stages' resume rule)."""
    m = cfg.model
    model = build_from(m.builder, m.kwargs or {}, trust_builder=m.trust_builder,
                       trusted_builders=m.trusted_builders or ())
    if m.weights:
        load_weights(model, read_weights(m.weights), f"{m.weights} (model.weights)")
        return model, {"weights": m.weights}
    out = stage_dir(cfg, "train")
    resumed = resolve_resume(resume, cfg, "train", cfg.train, None)
    if resumed is None:
        load_weights(model, read_weights(out / "weights.safetensors"), str(out / "weights.safetensors"))
        return model, read_json(out / "report.json")
    model, report = run_training(cfg, "train", model, cfg.train, resumed, data=data)
    write_user_stage(model, out, report, cfg)
    return model, report


def write_user_stage(model: nn.Module, out: Path, report: dict[str, Any], cfg: PipelineConfig) -> Path:
    """A user model's stage output (weights, report, config) as one step, as ``write_stage``
    writes a RepNet's: a kill mid-write leaves the previous output whole."""
    with staged_directory(out, carry=True) as staging:
        save_weights(model, staging / "weights.safetensors")
        atomic_write_json(staging / "report.json", report)
        record_config(staging, cfg)
    return out


def prune_user_model(cfg: PipelineConfig, dense: nn.Module, method_name: str, out: Path, data: TaskData
                     ) -> dict[str, Any]:
    """``method_name`` on a copy of ``dense`` at the configured budget, then fine-tuned,
    saved (``out/pruned``), fused and exported (``out/export``); returns its report."""
    s = cfg.search
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)  # every method draws the same batches and candidates, whichever runs first
    gated = GatedModel(copy.deepcopy(dense), torch.zeros(data.example_shape()), task=data.task_name,
                       name=cfg.model.builder or "model")
    loader = data.train_loader(s)
    method = create_method(method_name, gated, target=s.target_abs or s.target, metric=s.metric, alpha=s.alpha,
                           cost=user_latency(cfg, gated), step=cfg.extract.round_to,
                           tolerance=cfg.extract.tolerance, strength=s.strength, updates_per_epoch=len(loader),
                           epochs=s.epochs)
    if method.trains:
        run_training(cfg, "search", gated, s, False, data=data, terms=[method], out=out / "search",
                     label=f"search ({method_name})", gate_lr=s.gate_lr if method.learns_gates else None,
                     teacher=_teacher(dense, s.distill))
    searched = method.warnings() if method.trains else []  # the gates as the search left them
    inputs = sample_inputs(gated, data, method.input_count) if method.needs_inputs else None
    small = method.extract(inputs)
    masks = gated.masks()
    widths = [int(k.sum()) for k in masks]
    tcfg = finetune_config(dataclasses.replace(cfg, search=dataclasses.replace(s, method=method_name)))
    small, tuned = run_training(cfg, "finetune", small, tcfg, False, data=data, out=out / "finetune",
                                teacher=_teacher(dense, tcfg.distill), label=f"finetune ({method_name})")
    tuned = {k: tuned[k] for k in ("test", "seconds", "epochs")}
    save_pruned(small, out / "pruned", gated, builder=cfg.model.builder, kwargs=cfg.model.kwargs, masks=masks)
    facts = user_model_facts(gated, widths, method.budget.model if s.metric == "latency" else None)
    target = float(method.budget.target)
    report = {"method": method_name, **facts, "target": target, "alpha": method.budget.alpha,
              "cost_vs_target": facts[s.metric] / target,
              "dense_widths": gated.spec.widths, "dense_macs": float(gated.cost("macs", gated.spec.widths)),
              "finetune": tuned}
    report.update(export_user_model(cfg, fuse_user_model(small.eval()), gated.spec, facts, out / "export", data),
                  seconds=time.perf_counter() - started)
    report["warnings"] = searched + result_warnings(method_name, tuned["test"], gated.spec.widths, widths,
                                                    len(data.labels()) if data.task_name == "classification" else 0)
    for w in report["warnings"]:
        log.warning(w)
    atomic_write_json(out / "report.json", report)
    log.info(f"{method_name}: widths {widths}, {facts['macs']:,.0f} MACs ({report['cost_vs_target']:.3f} x target), "
             f"test {tuned['test']}")
    return report


def result_warnings(method: str, test: dict[str, float], dense_widths: list[int], widths: list[int],
                    classes: int) -> list[str]:
    """What makes a pruned result suspect, each in one sentence: top-1 near chance, or a
    channel group cut to a sliver of its width (4 or fewer channels of 64 or more)."""
    out = []
    top1 = test.get("top1")
    if classes and top1 is not None and top1 <= 1.5 * 100.0 / classes:
        out.append(f"{method}: top-1 {top1:.2f}% is near chance ({100.0 / classes:.2f}% for {classes} classes): "
                   "the pruned net learned little; check the widths, or train longer")
    thin = [f"group {i} at {w} of {d}" for i, (w, d) in enumerate(zip(widths, dense_widths)) if w <= 4 and d >= 64]
    if thin:
        out.append(f"{method}: {len(thin)} channel group(s) cut to a sliver ({', '.join(thin[:4])}"
                   f"{' ...' if len(thin) > 4 else ''}): such a layer chokes the net")
    return out


def _teacher(dense: nn.Module, distill: float) -> nn.Module | None:
    """The dense model, for ``search.distill`` / ``finetune.distill`` (None when off)."""
    return copy.deepcopy(dense).eval() if distill > 0 else None


def run_user_pipeline(cfg: PipelineConfig, *, resume: Resume = False, data: TaskData | None = None
                      ) -> dict[str, Any]:
    """Dense model, then the search and each ``search.compare`` method from it (RUN_DIR,
    RUN_DIR/compare-<method>); writes report.json and report.md."""
    s = cfg.search
    if s.pte_latency is not None or s.precision != "float" or s.int8_latency_table is not None:
        raise RepasError("search.pte_latency, search.precision and search.int8_latency_table are for repas's own "
                         "search spaces for now; for a user model set export.qat: true to ship a QAT int8 .pte at a "
                         "macs, params or latency budget")
    if cfg.search.metric == "latency" and not latency_table_path(cfg).is_file():
        raise RepasError(f"search.metric=latency needs this model's latency table at {latency_table_path(cfg)}: "
                         "measure it with 'repas profile' and the same config, or set search.latency_table")
    setup(cfg)
    data = data or get_data(cfg)
    if data.task_name not in ("classification", "denoising"):
        raise RepasError(f"model.builder runs on classification and denoising data for now, not on "
                         f"{data.task_name} ({cfg.data.name})")
    run = Path(cfg.run_dir)
    started = time.perf_counter()
    dense, dense_report = dense_model(cfg, data, resume)
    results = {cfg.search.method: prune_user_model(cfg, dense, cfg.search.method, run, data)}
    for method in cfg.search.compare or []:
        results[method] = prune_user_model(cfg, dense, method, run / f"compare-{method}", data)
    summary = {"builder": cfg.model.builder, "kwargs": cfg.model.kwargs, "task": data.task_name,
               "primary": data.primary, "baseline": data.baseline(), "dense": dense_report, "methods": results,
               "seconds": time.perf_counter() - started, "environment": environment()}
    atomic_write_json(run / "report.json", summary)
    atomic_write_text(run / "report.md", user_report_markdown(summary, cfg))
    record_config(run, cfg)
    return summary


def user_report_markdown(summary: dict[str, Any], cfg: PipelineConfig) -> str:
    s, key = cfg.search, summary.get("primary", "top1")
    dense = summary["dense"].get("test", {})
    shown = f"{key} {dense[key]:.2f}" if key in dense else f"weights {cfg.model.weights}"
    first = next(iter(summary["methods"].values()))
    baseline = summary.get("baseline")
    noisy = ""
    if baseline:  # denoising: what the noisy input itself scores
        noisy = " The noisy input itself: " + ", ".join(f"{k} {v:.4g}" for k, v in baseline.items()) + "."
    per = "an input" if summary.get("task", "classification") == "classification" else "a training patch"
    named = (summary.get("kwargs") or {}).get("model_name")  # timm.create_model's model
    lines = [f"# {summary['builder']}{f' ({named})' if named else ''} at {s.target:g} x dense {s.metric}", "",
             f"Dense ({first['dense_macs'] / 1e6:.2f} M MACs at {per}, group widths "
             f"{'/'.join(map(str, first['dense_widths']))}): {shown}.{noisy} Every method starts from the same dense "
             "weights and trains the same total epochs. Latency: the fused model in onnxruntime, batch 1, timed when "
             "each was exported (not interleaved).",
             "", f"| method | group widths | MACs | cost / target | {key} (PyTorch) | {key} (ONNX) | latency |",
             "|---|---|---|---|---|---|---|"]
    for name, r in summary["methods"].items():
        export = read_json(Path(cfg.run_dir) / ("" if name == s.method else f"compare-{name}") / "export" /
                           "report.json")
        lines.append(f"| {name} | {'/'.join(map(str, r['widths']))} | {r['macs'] / 1e6:.2f} M | "
                     f"{r['cost_vs_target']:.3f} | {r['finetune']['test'].get(key, float('nan')):.2f} | "
                     f"{export['onnx_metrics'].get(key, float('nan')):.2f} | "
                     f"{export['latency']['median_ms']:.3f} ms |")
    warnings = [w for r in summary["methods"].values() for w in r.get("warnings", [])]
    if warnings:
        lines += ["", "**Warnings:**", ""] + [f"- repas: warning: {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def finetune_pruned_stage(cfg: PipelineConfig, pruned: Path, *, resume: Resume = False,
                          data: TaskData | None = None) -> Path:
    """``repas finetune`` of a user model's run (or any ``pruned/`` directory): the pruned
    model rebuilt by its builder (trusted as ``model.trust_builder`` says), trained
    ``finetune.epochs`` more by the stages' own training (checkpoints in RUN/finetune; with
    ``finetune.distill``, the run's dense model in RUN/train teaches), and written back to
    ``pruned`` as one step. ``repas export`` then bundles it."""
    setup(cfg)
    record, model, data = open_pruned(cfg, pruned, data)
    trust = {"trust_builder": cfg.model.trust_builder, "trusted_builders": cfg.model.trusted_builders or ()}
    out = pruned.parent / "finetune"
    teacher = None
    if cfg.finetune.distill > 0:
        dense_dir = pruned.parent / "train"
        if not (dense_dir / "weights.safetensors").exists():
            raise RepasError(f"finetune.distill needs the run's dense model at {dense_dir} as its teacher")
        teacher = build_from(record["builder"], record["kwargs"], **trust)
        load_weights(teacher, read_weights(dense_dir / "weights.safetensors"), str(dense_dir))
    # --resume continues this command's own checkpoint; the pipeline's fine-tune is finished, not resumed
    model, report = run_training(cfg, "finetune", model, cfg.finetune, resume is True, data=data, out=out,
                                 teacher=teacher, label=f"finetune ({record['builder']})")
    raw = (pruned / "pruned.json").read_bytes()
    with staged_directory(pruned, carry=True) as staging:
        save_weights(model, staging / "weights.safetensors")
        atomic_write_bytes(staging / "pruned.json", raw)
        atomic_write_json(staging / "report.json", {**report, "source": str(pruned)})
    log.info(f"finetune: {pruned} updated, test {report['test']}; 'repas export {pruned.parent}' bundles it")
    return pruned
