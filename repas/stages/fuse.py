"""The fuse stage: every multi-branch block folded into one conv, checked against the
multi-branch net."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from repas.config import PipelineConfig
from repas.errors import RepasError
from repas.stages.common import check_input, model_facts, setup, source_dir, stage_dir, write_stage
from repas.supernet import fuse, load_model

log = logging.getLogger("repas.stages")


def fuse_stage(cfg: PipelineConfig, source: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Fold BN and fuse branches: a plain conv/act stack, checked against the original."""
    setup(cfg)
    model = load_model(source_dir(cfg, "fuse", source)).eval()
    fused = fuse(model)
    x = check_input(model.spec)
    with torch.no_grad():
        ref = model(x)
        rel = float((fused(x) - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    if rel > 1e-4:
        raise RepasError(f"fused net differs from the multi-branch net by {rel:.2e} (relative): please report")
    report = {"stage": "fuse", **model_facts(fused), "max_rel_diff_vs_multibranch": rel}
    log.info(f"fuse: {len(fused.blocks)} plain convs, max relative difference {rel:.1e}")
    return write_stage(fused, Path(out) if out else stage_dir(cfg, "fuse"), report, cfg)
