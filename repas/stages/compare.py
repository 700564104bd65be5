"""Another pruning method run beside the search, from the same dense net, at the same budget
and the same total epochs: search -> extract -> fine-tune -> fuse -> float ONNX export. The
pipeline runs ``search.compare`` this way so that report.md shows the searched net against
uniform scaling; ``scripts/bench_pareto.py`` runs every row of its tables with it."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from repas.config import PipelineConfig
from repas.json_files import read_json
from repas.stages.common import CONFIG_FILE, Resume, stage_dir
from repas.stages.export import export_stage
from repas.stages.extract import extract_stage
from repas.stages.fuse import fuse_stage
from repas.stages.resume import newer
from repas.stages.search import search_stage
from repas.stages.training import finetune_stage
from repas.task_data import TaskData

log = logging.getLogger("repas.stages")


def method_config(cfg: PipelineConfig, method: str, out: str | Path, **search: object) -> PipelineConfig:
    """``cfg`` with ``method`` choosing the widths (and any other search keys changed), run in ``out``."""
    return dataclasses.replace(cfg, run_dir=str(out), search=dataclasses.replace(cfg.search, method=method, **search))


def method_run(cfg: PipelineConfig, dense: str | Path, *, resume: Resume = False, data: TaskData | None = None,
               precision: str | None = None) -> Path:
    """Every stage after dense training for ``cfg`` (its own run directory), from the dense
    supernet in ``dense``; the fine-tune gets the search's epochs when the method spends
    none (``finetune_config``), so every method trains the same total epochs. Returns the
    export directory. Under ``--resume auto``, a finished run newer than ``dense`` is kept."""
    export = stage_dir(cfg, "export")
    recorded = export / CONFIG_FILE
    if resume == "auto" and newer(export, Path(dense)) and recorded.exists() and \
            read_json(recorded) == json.loads(json.dumps(dataclasses.asdict(cfg))):
        return export
    search_stage(cfg, source=dense, data=data)
    extract_stage(cfg)
    finetune_stage(cfg, data=data)
    fuse_stage(cfg)
    if precision is None:
        return export_stage(cfg, data=data, formats=["onnx"], int8=False)
    return export_stage(cfg, data=data, formats=["onnx", "pte"], int8=precision == "int8")


def compare_runs(cfg: PipelineConfig, *, resume: Resume = False, data: TaskData | None = None,
                 fit: dict[str, Any] | None = None) -> dict[str, Path]:
    """The methods of ``search.compare``, each in RUN_DIR/compare-<entry>: their export
    directories. An entry ``method@precision`` ships in that precision (its .pte), held to
    the measured latency budget ``fit`` where there is one (``search.pte_latency``)."""
    from repas.stages.measured_latency import at_precision

    run = Path(cfg.run_dir)
    out = {}
    for entry in cfg.search.compare or []:
        method, _, precision = entry.partition("@")
        log.info(f"compare: {entry} at the same {'measured latency' if fit else 'budget'} and total epochs, from "
                 f"{run / 'train'}")
        base = at_precision(cfg, fit, precision) if precision else cfg
        sub = method_config(base, method, run / f"compare-{entry}")
        out[entry] = method_run(sub, run / "train", resume=resume, data=data, precision=precision or None)
    return out
