"""What every stage shares: where stage directories are, the data, the cost model, the
facts a report records, and the checks that a model suits the stage's data."""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch

from repas import distributed
from repas.atomic import atomic_write_json, staged_directory
from repas.config import PipelineConfig
from repas.deploy import cpu_name
from repas.errors import Interrupted, RepasError
from repas.json_files import read_json
from repas.search import spec_cost
from repas.search.budget import budget_cost_model, width_multiple
from repas.search.cost import CostFn
from repas.spec import ArchSpec
from repas.supernet import RepNet
from repas.supernet.model_files import write_model_files
from repas.task_data import TaskData, make_task_data

log = logging.getLogger("repas.stages")
STAGES = ("train", "search", "extract", "finetune", "fuse", "export")
CONFIG_FILE = "config.json"  # the resolved config a stage ran with: later stages run on it alone
Resume = bool | str  # False, True (the stage's checkpoint must exist) or "auto"


def stage_dir(cfg: PipelineConfig, stage: str) -> Path:
    return Path(cfg.run_dir) / stage


def source_dir(cfg: PipelineConfig, stage: str, source: str | Path | None) -> Path:
    """The model directory ``stage`` reads: ``source``, or the previous stage's output."""
    if source is not None:
        path = Path(source)
        if not (path / "spec.json").exists():
            raise RepasError(f"{path} holds no model (no spec.json): --from names a stage directory such as "
                             "runs/fmnist/search")
        return path
    previous = STAGES[STAGES.index(stage) - 1]
    path = stage_dir(cfg, previous)
    if not (path / "spec.json").exists():
        raise RepasError(f"{stage} needs the output of '{previous}' at {path}: run 'repas {previous}' "
                         f"first, or name a model directory with --from DIR")
    return path


def setup(cfg: PipelineConfig) -> None:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)


def get_data(cfg: PipelineConfig) -> TaskData:
    """The configured data with its task (classification, super-resolution or denoising)."""
    return make_task_data(cfg)


def data_task(data: TaskData) -> str:
    return data.task_name


def check_task(spec: ArchSpec, data: TaskData, cfg: PipelineConfig, where: str | Path) -> None:
    """A model and data of different tasks cannot meet: say so before anything is written."""
    task = data_task(data)
    if spec.task != task:
        raise RepasError(f"{where} holds a {spec.task} model ({spec.name}) but the config's data "
                         f"({cfg.data.name}) is for {task}: pass the run's own config (--config) or a "
                         f"{task} model")


def check_input(spec: ArchSpec, batch: int = 4) -> torch.Tensor:
    """A random input for equality checks: the spec's size, or a small LR tile for SR nets
    (fully convolutional, so any size checks the same weights)."""
    size = (36, 44) if spec.task == "super-resolution" else spec.input_size
    return torch.randn(batch, spec.in_channels, *size)


def model_facts(model: RepNet) -> dict[str, Any]:
    return {"spec": model.spec.name, "widths": model.spec.widths, "macs": spec_cost(model.spec, "macs"),
            "params": spec_cost(model.spec, "params")}


def environment() -> dict[str, Any]:
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(), "processor": cpu_name(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}  # AVX2 / AVX512: which oneDNN kernels ran


def read_report(path: Path) -> dict[str, Any]:
    return read_json(path / "report.json", fix="rerun the stage that wrote it")


def record_config(out: Path, cfg: PipelineConfig) -> None:
    """Write the resolved config beside a stage's output, so that a later stage run on this
    directory alone (no --config) uses the same task, data and recipe."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CONFIG_FILE, dataclasses.asdict(cfg))


def save_stage(model: RepNet, out: Path, report: dict[str, Any], cfg: PipelineConfig) -> Path:
    """Rank 0 saves a stage's model, report and config; every process waits for it. A stage
    that a signal reached in its last epoch is saved complete, and then the run stops."""
    if distributed.is_main():
        write_stage(model, out, report, cfg)
    distributed.barrier()
    if report.get("stopped_by_signal"):
        raise Interrupted(report["stopped_by_signal"], f"after the {report['stage']} stage; its output is saved")
    return out


def write_stage(model: RepNet, out: Path, report: dict[str, Any], cfg: PipelineConfig) -> Path:
    """A stage's model, report and config, written as one step (``staged_directory``): a
    crash or kill mid-write leaves the stage's previous output whole; a training stage's
    checkpoint and logs stay beside the new output."""
    with staged_directory(out, carry=True) as staging:
        write_model_files(model, staging, report)
        record_config(staging, cfg)
    return out


def latency_table_path(cfg: PipelineConfig) -> Path:
    return Path(cfg.search.latency_table) if cfg.search.latency_table else Path(cfg.run_dir) / "latency.csv"


def cost_model(cfg: PipelineConfig, spec: ArchSpec, metric: str) -> CostFn:
    """``budget_cost_model`` with the configured latency table."""
    return budget_cost_model(spec, metric, latency_table_path(cfg), cfg.search.int8_latency_table)


def width_step(cfg: PipelineConfig, model: CostFn) -> int:
    """``width_multiple`` of the configured ``extract.round_to``."""
    return width_multiple(cfg.extract.round_to, model)


def warn(report: dict[str, Any], message: str) -> None:
    """A result that is suspect but not meaningless: logged, and kept in the report (and so
    in report.md)."""
    log.warning(message)
    report.setdefault("warnings", []).append(message)
