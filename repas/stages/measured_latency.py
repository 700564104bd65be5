"""``search.pte_latency``: a latency budget measured, not modelled, for a net that may ship
in int8.

From the trained dense net, ``uniform`` widths at a grid of MACs targets are cut, fused and
exported as .pte files (float, and post-training int8 where a precision asks for it; the
weights do not change the speed), then all are timed interleaved in one process with the
dense float net (``latency_each``, the export's threads). For each precision the budget is
met by the widest grid net whose .pte runs within ``pte_latency`` x the dense float net's:
int8's speed buys width, which is how int8 wins accuracy at a latency (docs/results.md).
The measurement is saved in RUN_DIR/pte-latency.json and reused while the dense net and
the settings are unchanged."""

from __future__ import annotations

import copy
import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from repas.atomic import atomic_write_json
from repas.config import PipelineConfig
from repas.json_files import read_json
from repas.search import create_method
from repas.stages.common import stage_dir
from repas.stages.export import export_shape
from repas.supernet import fuse, load_model

log = logging.getLogger("repas.stages")
GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.07, 0.05)
FILE = "pte-latency.json"


def precisions_asked(cfg: PipelineConfig) -> list[str]:
    """The searched net's precision and those of the ``method@precision`` compare entries."""
    asked = [cfg.search.precision] + [c.split("@", 1)[1] for c in cfg.search.compare or [] if "@" in c]
    return list(dict.fromkeys(asked))


def at_precision(cfg: PipelineConfig, fit: dict[str, Any] | None, precision: str) -> PipelineConfig:
    """``cfg`` as the stages run it for a net in ``precision``: under a measured budget, the
    MACs target ``fit`` chose for that precision; an int8 net's .pte trained by QAT."""
    s, e = cfg.search, cfg.export
    if fit is not None:
        s = dataclasses.replace(s, metric="macs", target=fit["choice"][precision], target_abs=None,
                                pte_latency=None)
    s = dataclasses.replace(s, precision=precision)
    if precision == "int8":
        formats = e.formats or ["onnx", "pte"]
        e = dataclasses.replace(e, qat=True, int8=True, formats=formats if "pte" in formats else [*formats, "pte"])
    return dataclasses.replace(cfg, search=s, export=e)


def measured_targets(cfg: PipelineConfig) -> dict[str, Any]:
    """The MACs target per precision that meets ``search.pte_latency`` (module docstring)."""
    run, train = Path(cfg.run_dir), stage_dir(cfg, "train")
    path = run / FILE
    settings = {"pte_latency": cfg.search.pte_latency, "precisions": precisions_asked(cfg), "grid": list(GRID),
                "round_to": cfg.extract.round_to, "tolerance": cfg.extract.tolerance, "threads": cfg.export.threads}
    if path.exists() and path.stat().st_mtime_ns >= (train / "report.json").stat().st_mtime_ns:
        saved = read_json(path, fix="delete it: the pipeline measures it again")
        if saved.get("settings") == settings:
            log.info(f"pte latency: measured before ({path}): targets {saved['choice']}")
            return saved
    from repas.deploy import export_models, latency_each
    from repas.deploy.executorch_export import set_executorch_threads
    from repas.deploy.runner import pte_runner

    dense = load_model(train).eval()
    shape = export_shape(cfg, dense.spec)
    int8 = "int8" in settings["precisions"]
    set_executorch_threads(cfg.export.threads)
    log.info(f"pte latency: timing uniform widths at {len(GRID)} MACs targets as .pte (float"
             f"{' and int8' if int8 else ''}) against the dense float net, interleaved")
    rows, runners = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for t in GRID:
            model = copy.deepcopy(dense)
            method = create_method("uniform", model, target=t, metric="macs", step=cfg.extract.round_to,
                                   tolerance=cfg.extract.tolerance)
            net = fuse(method.extract()).eval()
            made = export_models(net, Path(tmp) / f"{t:g}", shape, ["pte"],
                                 calibration=[torch.randn(8, *shape[1:])] if int8 else None)
            for precision, name in made["files"]["pte"].items():
                runners[f"{t:g} {precision}"] = (lambda p=Path(tmp) / f"{t:g}" / name: pte_runner(p))
            rows.append({"target": t, "widths": list(net.spec.widths)})
        times = latency_each(runners, shape, warmup=cfg.export.warmup, runs=cfg.export.runs)
    dense_ms = times["1 float"]
    budget = cfg.search.pte_latency * dense_ms
    for r in rows:
        r.update({p: times[f"{r['target']:g} {p}"] for p in ("float", "int8") if f"{r['target']:g} {p}" in times})
    choice, notes = {}, []
    for p in settings["precisions"]:
        fits = [r for r in rows if r[p] <= budget]
        best = max(fits, key=lambda r: r["target"]) if fits else min(rows, key=lambda r: r[p])
        choice[p] = best["target"]
        if not fits:
            notes.append(f"no uniform net in {p} runs within {cfg.search.pte_latency:g} x the dense float .pte "
                         f"({budget:.4f} ms): the fastest one measured ({best[p]:.4f} ms, {best['target']:g} x the "
                         "MACs) is used; raise search.pte_latency")
        log.info(f"pte latency: {p}: {best['target']:g} x the dense MACs, widths {best['widths']}, {best[p]:.4f} ms "
                 f"({best[p] / dense_ms:.2f} x the dense float net's {dense_ms:.4f} ms)")
    for n in notes:
        log.warning(n)
    doc = {"settings": settings, "dense_float_ms": dense_ms, "budget_ms": budget, "grid": rows, "choice": choice,
           "warnings": notes}
    atomic_write_json(path, doc)
    return doc


def time_shipped(run: Path, nets: dict[str, tuple[Path, str]], cfg: PipelineConfig) -> dict[str, float]:
    """The .pte each net ships (``nets``: name -> (its export directory, its precision)),
    timed interleaved in one process (ms)."""
    from repas.deploy import latency_each
    from repas.deploy.runner import pte_runner

    paths, shape = {}, None
    for name, (export, precision) in nets.items():
        manifest = read_json(export / "model.json")
        paths[name] = export / manifest["files"]["pte"][precision]
        shape = tuple(manifest["input"]["shape"])
    return latency_each({k: (lambda p=p: pte_runner(p)) for k, p in paths.items()}, shape,
                        warmup=cfg.export.warmup, runs=cfg.export.runs)
