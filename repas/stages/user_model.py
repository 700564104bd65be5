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

from repas.atomic import atomic_write_json, atomic_write_text
from repas.config import PipelineConfig, TrainConfig
from repas.errors import RepasError
from repas.graph import GatedModel, fuse_model, save_pruned
from repas.graph.builders import build_from
from repas.json_files import read_json
from repas.search import create_method
from repas.stages.common import Resume, environment, get_data, record_config, setup
from repas.stages.methods import sample_inputs
from repas.stages.training import finetune_config
from repas.stages.user_export import export_user_model
from repas.supernet.model_files import load_weights, read_weights, save_weights
from repas.task_data import TaskData
from repas.train import Trainer

log = logging.getLogger("repas.stages")


def user_model_facts(gated: GatedModel, widths: list[int]) -> dict[str, Any]:
    """Group widths, MACs and params of ``gated`` cut to ``widths``."""
    return {"spec": gated.spec.name, "widths": widths, "macs": float(gated.cost("macs", widths)),
            "params": float(gated.cost("params", widths))}


def _train(model: nn.Module, tcfg: TrainConfig, out: Path, data: TaskData, **kwargs: Any
           ) -> tuple[nn.Module, dict[str, Any]]:
    if tcfg.sandwich:
        raise RepasError("train.sandwich trains the subnets of a repas supernet; a user model (model.builder) "
                         "trains ungated, so it has none: set train.sandwich: 0")
    trainer = Trainer(model, data.task(tcfg, None), tcfg, out, **{"label": out.name, **kwargs})
    started = time.perf_counter()
    test = data.eval_batches(tcfg)
    trainer.fit(data.train_loader(tcfg), test)
    final = trainer.eval_model if not kwargs.get("terms") else model
    return final, {"test": trainer.evaluate(test, final), "seconds": time.perf_counter() - started,
                   "epochs": tcfg.epochs}


def dense_model(cfg: PipelineConfig, data: TaskData, resume: Resume = False) -> tuple[nn.Module, dict[str, Any]]:
    """The user's model, built by ``model.builder``, with ``model.weights`` or trained for
    ``train.epochs`` (its weights then saved in RUN_DIR/train; ``--resume auto`` keeps them)."""
    m = cfg.model
    model = build_from(m.builder, m.kwargs or {}, trust_builder=m.trust_builder,
                       trusted_builders=m.trusted_builders or ())
    out = Path(cfg.run_dir) / "train"
    weights = m.weights or (str(out / "weights.safetensors") if resume == "auto" and
                            (out / "report.json").exists() else None)
    if weights:
        load_weights(model, read_weights(weights), f"{weights} (model.weights)")
        report = read_json(out / "report.json") if not m.weights else {"weights": weights}
        return model, report
    model, report = _train(model, cfg.train, out, data)
    save_weights(model, out / "weights.safetensors")
    atomic_write_json(out / "report.json", {"stage": "train", **report})
    return model, report


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
    method = create_method(method_name, gated, target=s.target_abs or s.target, metric=s.metric,
                           step=cfg.extract.round_to, tolerance=cfg.extract.tolerance, strength=s.strength,
                           updates_per_epoch=len(loader), epochs=s.epochs)
    if method.trains:
        _train(gated, s, out / "search", data, terms=[method], label=f"search ({method_name})",
               gate_lr=s.gate_lr if method.learns_gates else None, teacher=_teacher(dense, s.distill))
    inputs = sample_inputs(gated, data, method.input_count) if method.needs_inputs else None
    small = method.extract(inputs)
    masks = gated.masks()
    widths = [int(k.sum()) for k in masks]
    tcfg = finetune_config(dataclasses.replace(cfg, search=dataclasses.replace(s, method=method_name)))
    small, tuned = _train(small, tcfg, out / "finetune", data, teacher=_teacher(dense, tcfg.distill),
                          label=f"finetune ({method_name})")
    save_pruned(small, out / "pruned", gated, builder=cfg.model.builder, kwargs=cfg.model.kwargs, masks=masks)
    facts = user_model_facts(gated, widths)
    target = float(method.budget.target)
    report = {"method": method_name, **facts, "target": target, "cost_vs_target": facts[s.metric] / target,
              "dense_widths": gated.spec.widths, "dense_macs": float(gated.cost("macs", gated.spec.widths)),
              "finetune": tuned}
    report.update(export_user_model(cfg, fuse_model(small.eval()), gated.spec, facts, out / "export", data),
                  seconds=time.perf_counter() - started)
    report["warnings"] = result_warnings(method_name, tuned["test"], gated.spec.widths, widths,
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
    if cfg.search.metric not in ("macs", "params"):
        raise RepasError(f"search.metric={cfg.search.metric}: a user model's budget is macs or params for now "
                         "(latency tables are measured for repas's own layer shapes)")
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
