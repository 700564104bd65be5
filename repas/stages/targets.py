"""Many subnets from one searched supernet (``repas extract --targets``): widths allocated
per target from the gate ranking, each subnet extracted and, on request, fine-tuned,
fused, exported and timed; a table of predicted against measured latency."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

from repas.atomic import atomic_write_json, atomic_write_text
from repas.config import PipelineConfig
from repas.errors import RepasError
from repas.search import LatencyModel, allocate_masks, gate_scores, resolve_target, threshold_masks
from repas.search.cost import CostFn, format_cost
from repas.spec import ArchSpec
from repas.stages.common import (
    cost_model,
    environment,
    get_data,
    latency_table_path,
    model_facts,
    read_report,
    setup,
    source_dir,
    stage_dir,
    width_step,
    write_stage,
)
from repas.stages.export import export_stage
from repas.stages.extract import extract_checked, load_searched
from repas.stages.fuse import fuse_stage
from repas.stages.training import finetune_stage
from repas.task_data import TaskData

log = logging.getLogger("repas.stages")


def target_metric(text: str, default: str) -> str:
    """'1.5ms' / '800us' is a latency target; a plain number or '2.5M' is in ``default``."""
    return "latency" if str(text).strip().lower().endswith("s") else default


def resolve_target_text(spec: ArchSpec, text: str, metric: str, fn: CostFn) -> float:
    """A target as written: a plain number in (0, 1] is a fraction of the dense cost
    ('0.5'); anything else is absolute ('2.5M', '1.5ms', '3000000')."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None and 0 < value <= 1:
        return resolve_target(spec, metric, fraction=value, model=fn)
    return resolve_target(spec, metric, absolute=text, model=fn)


def targets_stage(cfg: PipelineConfig, targets: list[str], source: str | Path | None = None, *,
                  finetune: bool = False, data: TaskData | None = None) -> Path:
    """For each target, widths allocated from the gate ranking (``cfg.extract.allocation``),
    extracted into ``<run_dir>/targets/<target>/extract``; with ``finetune``, each is also
    fine-tuned, fused and exported, and its latency measured. Writes
    ``<run_dir>/targets/report.md`` with predicted and measured latency."""
    setup(cfg)
    root = Path(cfg.run_dir) / "targets"
    for text in targets:  # each names a directory
        if not re.fullmatch(r"[\w.]+", str(text).strip()):
            raise RepasError(f"target {text!r} names a directory under {root}: write it as e.g. 0.5, 1.5ms, 800us "
                             "or 2.5M")
    src = source_dir(cfg, "extract", source)
    model = load_searched(src)
    scores = gate_scores(model)
    allocate = allocate_masks if cfg.extract.allocation == "ranked" else threshold_masks
    plans = []
    for text in targets:  # resolve every target before the long part, so a bad one fails fast
        label = str(text).strip()
        metric = target_metric(label, cfg.search.metric)
        fn = cost_model(cfg, model.spec, metric)
        plans.append((label, metric, fn, resolve_target_text(model.spec, label, metric, fn)))
    latency = LatencyModel.load(latency_table_path(cfg), model.spec) if latency_table_path(cfg).exists() else None
    rows = []
    for label, metric, fn, target in plans:
        masks = allocate(model.spec, scores, target, fn, step=width_step(cfg, fn))
        sub, diff = extract_checked(model, masks)
        cost = float(fn(sub.spec.widths))
        sub_cfg = dataclasses.replace(cfg, run_dir=str(root / label))
        row = {"target": label, "metric": metric, "target_value": target, "allocation": cfg.extract.allocation,
               **model_facts(sub), f"predicted_{metric}": cost, "cost_vs_target": cost / target,
               "predicted_latency_ms": float(latency(sub.spec.widths)) if latency else None}
        write_stage(sub, stage_dir(sub_cfg, "extract"), {"stage": "extract", **row,
                                                         "max_rel_diff_vs_gated_supernet": diff}, sub_cfg)
        log.info(f"extract {label}: widths {sub.spec.widths}, {metric} {format_cost(cost, metric)} = "
                 f"{cost / target:.3f} x target")
        if finetune:
            data = data or get_data(cfg)
            finetune_stage(sub_cfg, data=data)
            fuse_stage(sub_cfg)
            export_stage(sub_cfg, data=data)
            exported, tuned = read_report(stage_dir(sub_cfg, "export")), read_report(stage_dir(sub_cfg, "finetune"))
            row.update({"measured_latency_ms": exported["latency"]["median_ms"], "onnx_metrics":
                        exported["onnx_metrics"], "torch_metrics": tuned["test"]})
        rows.append(row)
    report = {"source": str(src), "allocation": cfg.extract.allocation, "subnets": rows,
              "threads": cfg.export.threads, "environment": environment()}
    atomic_write_json(root / "report.json", report)
    atomic_write_text(root / "report.md", targets_markdown(report))
    log.info("\n" + targets_markdown(report))
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


