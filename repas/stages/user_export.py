"""The bundle of a user's own model (``model.builder``): written by the pipeline for each
method's pruned net, and by ``repas export`` for a user model's run or its ``pruned/``."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repas.config import PipelineConfig
from repas.errors import RepasError
from repas.graph import GraphSpec, fuse_user_model, load_pruned
from repas.graph.cost import counted_macs
from repas.graph.files import read_pruned_record
from repas.stages.common import get_data, setup, stage_dir
from repas.stages.export import export_formats, write_bundle
from repas.task_data import TaskData

log = logging.getLogger("repas.stages")


def pruned_dir(cfg: PipelineConfig, source: str | Path | None) -> Path | None:
    """The pruned user model ``repas export`` reads, if it reads one: ``source`` holding a
    pruned.json, or the run directory's ``pruned/`` when it has no fused repas net."""
    if source is not None:
        return Path(source) if (Path(source) / "pruned.json").exists() else None
    run = Path(cfg.run_dir)
    if (run / "pruned" / "pruned.json").exists() and not (stage_dir(cfg, "fuse") / "spec.json").exists():
        return run / "pruned"
    return None


def export_user_model(cfg: PipelineConfig, fused: nn.Module, spec: Any, facts: dict[str, Any], out: Path,  # noqa: ANN401
                      data: TaskData) -> dict[str, Any]:
    """The bundle of a fused user model in the configured formats (float and, with
    ``export.int8``, int8). Where ExecuTorch was not asked for by name and cannot delegate
    every op of the model to XNNPACK (after repas.deploy.xnnpack_rewrites), the bundle is ONNX
    alone and the report says why; asked for by name, that is an error."""
    formats = export_formats(cfg)
    try:
        write_bundle(cfg, fused, spec, facts, out, data=data, formats=formats)
        return {"formats": formats}
    except RepasError as e:
        if cfg.export.formats or formats == ["onnx"]:
            raise
        log.warning(f"export: no ExecuTorch files for {spec.name}: {e}. The bundle is ONNX alone "
                    "(set export.formats: [onnx] to skip the attempt)")
        write_bundle(cfg, fused, spec, facts, out, data=data, formats=["onnx"])
        return {"formats": ["onnx"], "pte_skipped": str(e)}


def open_pruned(cfg: PipelineConfig, pruned: Path, data: TaskData | None = None
                ) -> tuple[dict[str, Any], nn.Module, TaskData]:
    """A ``pruned/`` directory's checked record, its model rebuilt by its builder (trusted as
    ``model.trust_builder`` / ``model.trusted_builders`` say) and the configured data,
    checked to be of the model's task."""
    record = read_pruned_record(pruned)
    model = load_pruned(pruned, trust_builder=cfg.model.trust_builder,
                        trusted_builders=cfg.model.trusted_builders or ())
    data = data or get_data(cfg)
    task = "classification" if record["task"] == "classification" else data.task_name
    if data.task_name != task:
        raise RepasError(f"{pruned} is a {record['task']} model but the config's data ({cfg.data.name}) is "
                         f"{data.task_name}: pass the run's config with --config")
    return record, model, data


def export_pruned_stage(cfg: PipelineConfig, pruned: Path, out: Path, data: TaskData | None = None) -> Path:
    """``repas export`` of a user model's run (or any ``pruned/`` directory): the pruned model
    rebuilt by its builder (``load_pruned``, trusted as ``model.trust_builder`` says), its
    conv+BN folded, and the bundle written to ``out`` as the pipeline writes it."""
    setup(cfg)
    record, model, data = open_pruned(cfg, pruned, data)
    model.eval()
    shape = tuple(record["input_shape"])
    widths = [len(g["keep"]) for g in record["groups"]]
    facts = {"spec": record["builder"], "widths": widths, "macs": counted_macs(model, torch.zeros(shape)),
             "params": float(sum(math.prod(p.shape) for p in model.parameters()))}
    spec = GraphSpec(name=record["builder"], layers=[], input_shape=shape, task=data.task_name)
    export_user_model(cfg, fuse_user_model(model), spec, facts, out, data)
    return out
