"""The profile stage: a latency table of the space's layer shapes, measured here or built
from micro-models timed on another device."""

from __future__ import annotations

import logging
from pathlib import Path

from repas.config import PipelineConfig
from repas.deploy.profile import profile, table_from_device
from repas.json_files import read_json
from repas.spec import ArchSpec
from repas.stages.common import get_data, latency_table_path, setup
from repas.task_data import TaskData, shaped_spec

log = logging.getLogger("repas.stages")


def profile_stage(cfg: PipelineConfig, out: str | Path | None = None, *, data: TaskData | None = None,
                  from_device: str | Path | None = None) -> Path:
    """Measure the latency table of the configured space on ``cfg.profile.backend``, or
    build it from micro-models timed on another device (``from_device``)."""
    setup(cfg)
    if from_device is not None:
        table = table_from_device(from_device)
        spec = ArchSpec.from_dict(read_json(Path(from_device) / "plan.json")["spec"])
    else:
        data = data or get_data(cfg)
        spec = shaped_spec(cfg, data)
        p = cfg.profile
        table = profile(spec, p.backend, divisor=p.divisor, threads=cfg.export.threads, warmup=p.warmup,
                        runs=p.runs, passes=p.passes)
    path = table.save(out or latency_table_path(cfg))
    log.info(f"profile: {len(table)} rows for {spec.name} on {table.meta['backend']} ({table.meta['threads']} "
             f"thread), overhead {table.overhead:.4f} ms -> {path}")
    return path
