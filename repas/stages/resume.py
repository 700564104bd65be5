"""``--resume auto``: which stages are complete (skipped), which continue from their
checkpoint, and which start over."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from repas.config import PipelineConfig, TrainConfig
from repas.json_files import read_json
from repas.stages.common import Resume, stage_dir
from repas.train import CHECKPOINT

log = logging.getLogger("repas.stages")


def newer(out: Path, source: Path) -> bool:
    """``out`` was written after ``source`` (both stage directories with a report.json)."""
    mine, theirs = out / "report.json", source / "report.json"
    return mine.exists() and (not theirs.exists() or theirs.stat().st_mtime_ns <= mine.stat().st_mtime_ns)


def stage_complete(cfg: PipelineConfig, stage: str, tcfg: TrainConfig, source: Path | None = None) -> bool:
    """What ``--resume auto`` skips: the stage's output, saved after its last checkpoint,
    made with the same recipe (``tcfg``), and newer than its ``source`` stage's output."""
    out = stage_dir(cfg, stage)
    report, ckpt = out / "report.json", out / CHECKPOINT
    if not (report.exists() and (out / "weights.safetensors").exists()):
        return False
    if ckpt.exists() and report.stat().st_mtime_ns < ckpt.stat().st_mtime_ns:
        return False
    if source is not None and not newer(out, source):
        return False
    saved = read_json(report).get("config", {})
    now = dataclasses.asdict(tcfg)
    # a key the report lacks was added since it was written: it ran at that key's default
    defaults = {f.name: f.default for f in dataclasses.fields(tcfg)}
    return all(saved.get(k, defaults.get(k)) == v for k, v in now.items() if k != "checkpoint_every")


def resolve_resume(resume: Resume, cfg: PipelineConfig, stage: str, tcfg: TrainConfig,
                   source: Path | None) -> bool | None:
    """What ``--resume auto`` means for a training stage: None when its output is complete
    (skip it), True when its checkpoint can be continued, False to start it. A checkpoint
    older than the source stage's output was made from another net: the stage starts over."""
    if resume != "auto":
        out = stage_dir(cfg, stage)
        if not resume and (out / "report.json").exists() and (out / "weights.safetensors").exists():
            log.warning(f"{stage}: {out} holds a finished stage, which this run replaces when it ends; "
                        "rerun with --resume auto to keep finished stages")
        return bool(resume)
    if stage_complete(cfg, stage, tcfg, source):
        log.info(f"{stage}: complete in {stage_dir(cfg, stage)}, skipped (--resume auto)")
        return None
    ckpt = stage_dir(cfg, stage) / CHECKPOINT
    if not ckpt.exists():
        return False
    stale = source is not None and (source / "report.json").exists() and \
        (source / "report.json").stat().st_mtime_ns > ckpt.stat().st_mtime_ns
    if stale:
        log.info(f"{stage}: {ckpt} is older than {source}: starting the stage over (--resume auto)")
    return not stale
