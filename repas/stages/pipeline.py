"""``run_pipeline``: every stage in order, plus the dense net fused and exported for the
comparison, the methods of ``search.compare`` run beside the search, and the summary
(report.md)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from repas import distributed
from repas.atomic import atomic_write_json, atomic_write_text
from repas.config import PipelineConfig
from repas.deploy import onnx_latency_each
from repas.json_files import read_json
from repas.stages.common import CONFIG_FILE, STAGES, Resume, get_data, latency_table_path, read_report, stage_dir
from repas.stages.compare import compare_runs
from repas.stages.export import export_stage
from repas.stages.extract import extract_stage
from repas.stages.fuse import fuse_stage
from repas.stages.measured_latency import at_precision, measured_targets, time_shipped
from repas.stages.profile import profile_stage
from repas.stages.report import summarize, summary_markdown
from repas.stages.resume import newer
from repas.stages.search import search_stage
from repas.stages.training import finetune_stage, train_stage

log = logging.getLogger("repas.stages")
SUMMARY = "summary.json"


def pipeline_complete(cfg: PipelineConfig) -> bool:
    """The run directory holds a summary newer than every stage's output, made with this
    config: ``--resume auto`` has nothing to do."""
    run = Path(cfg.run_dir)
    summary, saved = run / SUMMARY, run / CONFIG_FILE
    if not (summary.exists() and saved.exists()):
        return False
    if read_json(saved) != json.loads(json.dumps(dataclasses.asdict(cfg))):
        return False
    outputs = [run / s / "report.json" for s in (*STAGES, "dense-fuse", "dense-export")]
    return all(p.exists() and p.stat().st_mtime_ns <= summary.stat().st_mtime_ns for p in outputs)


def _unless_done(resume: Resume, out: Path, source: Path, cfg: PipelineConfig | None = None) -> bool:
    """A one-shot stage reruns, except under ``--resume auto`` when its output is newer
    than its source's (and, given ``cfg``, was made with the same export settings)."""
    if resume != "auto" or not newer(out, source):
        return True
    if cfg is None:
        return False
    recorded = out / CONFIG_FILE
    return not recorded.exists() or read_json(recorded).get("export") != \
        json.loads(json.dumps(dataclasses.asdict(cfg.export)))


def run_pipeline(cfg: PipelineConfig, *, resume: Resume = False) -> dict[str, Any] | None:
    """All stages, plus the dense net fused and exported for comparison; writes report.md.
    Under torchrun every process trains, searches and fine-tunes; rank 0 alone extracts,
    fuses, exports and reports (the others return None)."""
    if cfg.model.builder:  # the user's own CNN
        from repas.stages.user_model import run_user_pipeline

        return run_user_pipeline(cfg, resume=resume)
    run = Path(cfg.run_dir)
    if resume == "auto" and pipeline_complete(cfg):
        log.info(f"pipeline: complete in {run}, nothing to do (--resume auto); the report is {run / 'report.md'}")
        return read_json(run / SUMMARY)
    started = time.perf_counter()
    data = get_data(cfg)
    if cfg.search.metric == "latency" and not latency_table_path(cfg).exists() and distributed.is_main():
        log.info(f"no latency table at {latency_table_path(cfg)}: measuring one on this machine")
        profile_stage(cfg, data=data)
    distributed.barrier()
    train_stage(cfg, resume=resume, data=data)
    fit = None
    if cfg.search.pte_latency is not None:  # measured on rank 0; every process reads the file it writes
        if distributed.is_main():
            measured_targets(cfg)
        distributed.barrier()
        fit = measured_targets(cfg)
    work = at_precision(cfg, fit, cfg.search.precision)  # the stages' config: the budget as MACs, the precision
    search_stage(work, resume=resume, data=data)
    if distributed.is_main() and _unless_done(resume, stage_dir(cfg, "extract"), stage_dir(cfg, "search")):
        extract_stage(work)
    distributed.barrier()
    finetune_stage(work, resume=resume, data=data)
    if not distributed.is_main():
        return None
    if _unless_done(resume, stage_dir(cfg, "fuse"), stage_dir(cfg, "finetune")):
        fuse_stage(work)
    if _unless_done(resume, stage_dir(cfg, "export"), stage_dir(cfg, "fuse"), work):
        export_stage(work, data=data)
    if _unless_done(resume, run / "dense-fuse", stage_dir(cfg, "train")):
        fuse_stage(cfg, source=run / "train", out=run / "dense-fuse")
    dense_formats = ["onnx", "pte"] if fit is not None else ["onnx"]  # a measured budget times the dense .pte
    if _unless_done(resume, run / "dense-export", run / "dense-fuse", cfg) or \
            (fit is not None and not (run / "dense-export" / "model.pte").exists()):
        # the dense net, for the comparison only: float
        export_stage(cfg, source=run / "dense-fuse", out=run / "dense-export", data=data, formats=dense_formats,
                     int8=False)
    compared = compare_runs(cfg, resume=resume, data=data, fit=fit)
    e = cfg.export
    shape = tuple(read_report(run / "export")["latency_input"])
    exports = {"dense": run / "dense-export", "searched": run / "export", **compared}
    latency = onnx_latency_each({k: d / "model.onnx" for k, d in exports.items()}, shape, threads=e.threads,
                                warmup=e.warmup, runs=e.runs)
    latency = {k: {"median_ms": v} for k, v in latency.items()}
    summary = summarize(work, latency, time.perf_counter() - started, data.primary, data.baseline(), compared)
    if fit is not None:
        summary["pte_latency"] = shipped_at_budget(cfg, fit, compared)
    atomic_write_json(run / CONFIG_FILE, dataclasses.asdict(cfg))
    atomic_write_json(run / SUMMARY, summary)
    atomic_write_text(run / "report.md", summary_markdown(summary))
    log.info("\n" + summary_markdown(summary))
    return summary


def shipped_at_budget(cfg: PipelineConfig, fit: dict[str, Any], compared: dict[str, Path]) -> dict[str, Any]:
    """Under ``search.pte_latency``: each shipped .pte (dense float, the searched net in its
    precision, each ``method@precision`` compared) timed interleaved in one process, with
    its .pte score and its latency as a fraction of the dense float net's."""
    run = Path(cfg.run_dir)
    nets = {"dense": (run / "dense-export", "float"), "searched": (run / "export", cfg.search.precision)}
    nets.update({name: (d, name.split("@", 1)[1]) for name, d in compared.items() if "@" in name})
    times = time_shipped(run, nets, cfg)
    out = {}
    for name, (export, precision) in nets.items():
        manifest = read_json(export / "model.json")
        out[name] = {"precision": precision, "widths": manifest.get("widths"), "ms": times[name],
                     "vs_dense_float": times[name] / times["dense"],
                     "metrics": manifest.get("metrics", {}).get(f"pte {precision}", {})}
    return {"fraction": cfg.search.pte_latency, "calibration": {k: fit[k] for k in ("dense_float_ms", "budget_ms",
                                                                                   "choice")},
            "nets": out}
