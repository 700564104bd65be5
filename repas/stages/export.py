"""The export stage: the deployment bundle of a fused net, written whole or not at all."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from torch import nn

from repas.atomic import atomic_write_json, atomic_write_text, staged_directory
from repas.config import PipelineConfig
from repas.deploy import cpu_name, export_models, latency_each, write_manifest
from repas.deploy.runner import onnx_runner, pte_runner
from repas.json_files import read_json
from repas.spec import ArchSpec
from repas.stages.common import (
    check_task,
    environment,
    get_data,
    model_facts,
    record_config,
    setup,
    source_dir,
    stage_dir,
)
from repas.supernet import load_model
from repas.task_data import TaskData

log = logging.getLogger("repas.stages")
RUNTIMES = {"onnx": "onnxruntime", "pte": "executorch"}


def int8_sensitivity_of(cfg: PipelineConfig, model: nn.Module, spec: Any, data: TaskData,  # noqa: ANN401
                        shape: tuple[int, ...], calibration: list[Any]) -> dict[str, float]:
    """Each layer's int8 sensitivity: the test metric in PyTorch's int8 reference with only
    that layer int8, minus float's (``repas.deploy.mixed_precision.int8_sensitivity``)."""
    import torch

    from repas.deploy.mixed_precision import int8_sensitivity

    task, batches = data.task(cfg.finetune, spec), data.eval_batches(cfg.finetune)
    primary = data.primary

    def score(m: nn.Module) -> float:
        return float(task.evaluate(m, batches)[primary])

    got = int8_sensitivity(model, torch.zeros(*shape), calibration, score, observer=cfg.export.observer)
    worst = sorted(got.items(), key=lambda kv: kv[1])[:3]
    log.info("export: int8 sensitivity (" + primary + " with only that layer int8, minus float): " +
             ", ".join(f"{k} {v:+.3f}" for k, v in worst) + (" ..." if len(got) > 3 else ""))
    return got


def recommended_precision(latency_ms: dict[str, dict[str, float]]) -> dict[str, str]:
    """For each runtime, the precision to ship: int8 where it was measured faster than
    float, else float (onnxruntime's int8 is slower than its float on some CPUs and nets)."""
    out = {}
    for runtime, times in latency_ms.items():
        faster = "int8" in times and "float" in times and times["int8"] < times["float"]
        out[runtime] = "int8" if faster else "float"
        if "int8" in times and not faster:
            log.warning(f"export: int8 is not faster than float in {runtime} here ({times['int8']:.3f} ms against "
                        f"{times['float']:.3f} ms): the bundle recommends float")
    return out


def export_formats(cfg: PipelineConfig) -> list[str]:
    """The configured formats; by default onnx, plus pte where ExecuTorch is installed."""
    if cfg.export.formats:
        return list(cfg.export.formats)
    from repas.deploy.executorch_export import executorch_available

    return ["onnx", "pte"] if executorch_available() else ["onnx"]


def export_shape(cfg: PipelineConfig, spec: ArchSpec) -> tuple[int, ...]:
    """The static input shape of the exported files: batch 1 at the spec's input size, or
    for an image-to-image model (SR, denoising) the configured input tile."""
    tile = cfg.export.tile if spec.task != "classification" and cfg.export.tile else spec.input_size
    return (1, spec.in_channels, *tile)


def with_searched_precision(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` whose int8 files keep float the layers the search priced in float (its
    extract report's ``precision``, under ``search.int8_latency_table``), unless
    ``export.float_layers`` names them itself."""
    report = stage_dir(cfg, "extract") / "report.json"
    if cfg.export.float_layers is not None or cfg.search.int8_latency_table is None or not report.is_file():
        return cfg
    precision = read_json(report).get("precision")
    if not precision:
        return cfg
    keep = [f"blocks.{i}.reparam_conv" for i, p in enumerate(precision) if p == "float"]
    log.info(f"export: the searched precision keeps {keep or 'no layer'} float in the int8 files")
    return dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, float_layers=keep))


def export_stage(cfg: PipelineConfig, source: str | Path | None = None, out: str | Path | None = None, *,
                 data: TaskData | None = None, formats: list[str] | None = None, int8: bool | None = None) -> Path:
    """The deployment bundle: the fused net as .onnx / .pte files (float, and int8
    calibrated on training inputs) at a static batch-1 shape, each float file checked
    against PyTorch, every file scored on the test split through the runner ``repas
    predict`` uses and timed on its runtime; ``model.json`` says how to use them. The
    bundle is built in a fresh directory that replaces ``out`` only when all of it is done."""
    setup(cfg)
    src = source_dir(cfg, "export", source)
    model = load_model(src).eval()
    cfg = with_searched_precision(cfg)
    data = data or get_data(cfg)
    check_task(model.spec, data, cfg, src)
    out = Path(out or stage_dir(cfg, "export"))
    write_bundle(cfg, model, model.spec, model_facts(model), out, data=data, formats=formats, int8=int8,
                 source=src, spec_json=model.spec.to_json())
    return out


def write_bundle(cfg: PipelineConfig, model: nn.Module, spec: Any, facts: dict[str, Any], out: Path, *,
                 data: TaskData, formats: list[str] | None = None, int8: bool | None = None,
                 source: Path | None = None, spec_json: str | None = None) -> Path:
    """The bundle of ``model`` (fused, eval) in ``out``: what ``export_stage`` writes, for a
    repas net or a user's own model (``spec``: its task, name and input channels; ``facts``:
    its widths, MACs and params)."""
    e = cfg.export
    shape = export_shape(cfg, spec)
    formats = formats or export_formats(cfg)
    int8 = e.int8 if int8 is None else int8
    calibration = None
    if int8:
        calibration = data.calibration_inputs(shape, e.calibration or (256 if spec.task == "classification" else 16))
    if "pte" in formats:  # XNNPACK's threadpool is sized before the first program runs
        from repas.deploy.executorch_export import set_executorch_threads

        set_executorch_threads(e.threads)
    float_layers = e.float_layers or []
    if float_layers:
        from repas.deploy.mixed_precision import check_layers

        check_layers(model, float_layers, "export.float_layers")
    qat, qat_report = None, None
    if int8 and e.qat:
        from repas.deploy.executorch_export import executorch_version
        from repas.stages.qat import qat_int8

        executorch_version()  # (the XNNPACK quantizer QAT trains with) a clear error before minutes of training
        qat, _, qat_report = qat_int8(cfg, model, data, spec)
    sensitivity = int8_sensitivity_of(cfg, model, spec, data, shape, calibration) if int8 and e.sensitivity else None
    with staged_directory(out) as staging:
        # with QAT the float files stay the net before QAT: the trained weights run in float
        # lose what they learnt to lean on (int8's clamped activation ranges): 79.83 against
        # 81.24 top-1 on a timm RepVGG-A0 run, where its int8 .pte scored 81.63
        made = export_models(model, staging, shape, formats, calibration=calibration, observer=e.observer, qat=qat,
                             float_layers=float_layers)
        if qat_report is not None:
            made["checks"]["qat"] = qat_report
        if sensitivity is not None:
            made["checks"]["int8_sensitivity"] = sensitivity
        runners = {}
        for fmt, files in made["files"].items():
            for precision, name in files.items():
                runners[f"{fmt} {precision}"] = ((lambda p=staging / name: onnx_runner(p, e.threads)) if fmt == "onnx"
                                                  else (lambda p=staging / name: pte_runner(p)))
        metrics = {k: data.score(make(), spec, shape) for k, make in runners.items()}
        times = latency_each(runners, shape, warmup=e.warmup, runs=e.runs)
        for k in runners:
            shown = ", ".join(f"{m} {v:.4g}" for m, v in metrics[k].items())
            log.info(f"export: {k}: {shown}, latency {times[k]:.3f} ms at {'x'.join(map(str, shape[2:]))} "
                     f"({e.threads} thread)")
        latency_ms: dict[str, dict[str, float]] = {}
        for k, v in times.items():
            fmt, precision = k.split()
            latency_ms.setdefault(RUNTIMES[fmt], {})[precision] = v
        recommended = recommended_precision(latency_ms)
        manifest = {"task": spec.task, "name": spec.name, "input": data.bundle_input(spec, shape),
                    **({"scale": getattr(spec, "scale", 1),
                        "output": "image in [0, 1], scale x the input's height and width"}
                       if spec.task != "classification" else
                       {"labels": data.labels(), "output": "logits, one per label (softmax for probabilities)"}),
                    "widths": facts["widths"], "macs": facts["macs"], "params": facts["params"],
                    "files": made["files"], "checks": made["checks"], "metrics": metrics, "latency_ms": latency_ms,
                    "recommended_precision": recommended,
                    "latency_protocol": {"batch": 1, "input": list(shape), "threads": e.threads, "runs": e.runs,
                                         "warmup": e.warmup, "statistic": "lowest of 5 sessions' medians",
                                         "device": cpu_name()}}
        write_manifest(staging, manifest)
        primary = "onnx float" if "onnx float" in metrics else next(iter(metrics))
        latency = {"median_ms": times[primary], "statistic": "lowest of 5 sessions' medians", "runs": e.runs,
                   "threads": e.threads}
        onnx_file = made["files"].get("onnx", {}).get("float")
        report = {"stage": "export", "source": str(source) if source else None, **facts, "formats": formats,
                  "onnx": str(out / onnx_file) if onnx_file else None,
                  "max_abs_diff_onnx_vs_torch": made["checks"].get("onnx_float_max_abs_diff"),
                  "onnx_metrics": metrics[primary], "metrics": metrics, "latency": latency, "latency_ms": latency_ms,
                  "checks": made["checks"], "latency_input": list(shape), "environment": environment()}
        atomic_write_json(staging / "report.json", report)
        if spec_json is not None:
            atomic_write_text(staging / "spec.json", spec_json + "\n")
        record_config(staging, cfg)
    log.info(f"export: the bundle is {out} ({', '.join(sorted(n for f in made['files'].values() for n in f.values()))}"
             ", model.json)")
    return out
