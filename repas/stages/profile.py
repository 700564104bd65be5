"""The profile stage: a latency table of the space's layer shapes, measured here or built
from micro-models timed on another device."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from repas.config import PipelineConfig
from repas.deploy.profile import profile, table_from_device
from repas.deploy.profile_parts import profile_parts
from repas.errors import RepasError
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
    if from_device is not None and cfg.model.builder:
        raise RepasError("--from-device builds tables of repas's own spaces; a user model (model.builder) is "
                         "profiled on this machine: run 'repas profile' without --from-device")
    if cfg.model.builder:
        return _profile_user_model(cfg, out, data)
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


def _profile_user_model(cfg: PipelineConfig, out: str | Path | None, data: TaskData | None) -> Path:
    """The table of a user model's own conv shapes (``repas.search.graph_latency``),
    calibrated on whole nets as export ships them (BatchNorm folded): the dense model and
    the model cut to half and a quarter of every group's channels."""
    from repas.graph import GatedModel, fuse_user_model
    from repas.graph.builders import build_from
    from repas.search.graph_latency import calibrate, graph_parts, graph_profile_grid, graph_rows

    data = data or get_data(cfg)
    m, p = cfg.model, cfg.profile
    model = build_from(m.builder, m.kwargs or {}, trust_builder=m.trust_builder,
                       trusted_builders=m.trusted_builders or ()).eval()
    example = torch.randn(data.example_shape())
    gated = GatedModel(model, example, task=data.task_name, name=m.builder)
    sizes = gated.spec.widths
    grid, joins = graph_profile_grid(graph_parts(gated.costs), sizes, p.divisor, p.points)
    nets = {f"{f:g}": [max(1, min(s, round(s * f / p.divisor) * p.divisor)) for s in sizes] for f in (1, 0.5, 0.25)}
    wholes = {name: fuse_user_model(gated.extract([(torch.arange(s) < w).float() for s, w in zip(sizes, widths)]))
              for name, widths in nets.items()}
    boundaries = [(k, c) for k, cs in joins.items() for c in cs] if p.backend.startswith("executorch") else []
    table, times = profile_parts(graph_rows(grid), boundaries, wholes, example, p.backend,
                                 threads=cfg.export.threads, warmup=p.warmup, runs=p.runs, passes=p.passes,
                                 meta={"model": m.builder, "divisor": str(p.divisor), "points": str(p.points)})
    calibrate(table, gated.costs, sizes, [(nets[name], ms) for name, ms in times.items()])
    path = table.save(out or latency_table_path(cfg))
    log.info(f"profile: {len(table)} rows for {m.builder} on {table.meta['backend']} ({table.meta['threads']} "
             f"thread), whole nets {table.meta['whole_nets_ms']} ms, row scale {table.meta['row_scale']}, "
             f"overhead {table.overhead:.4f} ms -> {path}")
    return path
