"""The stages that train a net at fixed widths: the dense supernet (``train``) and the
extracted subnet (``finetune``), and the runner the search stage shares with them."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from repas.config import PipelineConfig, TrainConfig
from repas.errors import RepasError
from repas.search import method_class
from repas.search.sandwich import SandwichRule
from repas.search.weight_sparsity import KeepZeros, density, one_conv_form
from repas.stages.common import (
    Resume,
    check_task,
    environment,
    get_data,
    model_facts,
    save_stage,
    setup,
    source_dir,
    stage_dir,
)
from repas.stages.resume import resolve_resume
from repas.supernet import RepNet, build, fuse, load_model
from repas.task_data import TaskData, shaped_spec
from repas.train import LossTerm, Trainer


def run_training(cfg: PipelineConfig, stage: str, model: nn.Module, tcfg: TrainConfig, resume: Resume, *,
                 data: TaskData, terms: Sequence[LossTerm] = (), gate_lr: float | None = None,
                 out: Path | None = None, teacher: nn.Module | None = None, label: str | None = None
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``model`` for ``tcfg.epochs`` in ``out`` (default ``<run_dir>/<stage>``); returns
    the net to keep (the EMA net of a plain training run; a search keeps its own gates) and
    its report. Every training of every model runs here: repas's own supernets and subnets
    (a RepNet) and a user's own CNN (``model.builder``; ``teacher`` is then its dense model)."""
    if tcfg.sandwich and stage != "train":
        raise RepasError(f"{stage}.sandwich: the sandwich rule trains the dense supernet's subnets; set it as "
                         "train.sandwich (the search and the fine-tune train at the widths they hold)")
    own = isinstance(model, RepNet)
    if tcfg.sandwich and not own:
        raise RepasError("train.sandwich trains the subnets of a repas supernet; a user model (model.builder) "
                         "trains ungated, so it has none: set train.sandwich: 0")
    train, test = data.train_loader(tcfg), data.eval_batches(tcfg)
    task = data.task(tcfg, model.spec if own else None)
    if teacher is None and tcfg.distill > 0:
        teacher = dense_teacher(cfg, stage)
    label = label or (stage if stage == "train" else f"{stage} ({cfg.search.method})")
    trainer = Trainer(model, task, tcfg, out or stage_dir(cfg, stage), terms=terms, gate_lr=gate_lr,
                      teacher=teacher if tcfg.distill > 0 else None, label=label)
    started = time.perf_counter()
    trainer.fit(train, test, resume=bool(resume))
    searching = any(getattr(t, "searches", True) for t in terms)  # a search keeps its gates, not an EMA net
    final = model if searching else trainer.eval_model
    metrics = trainer.evaluate(test, final)
    final.cpu()
    report = {"stage": stage, **(model_facts(final) if own else {}), "test": metrics,
              "seconds": time.perf_counter() - started, "epochs": tcfg.epochs,
              "history": trainer.history, "config": dataclasses.asdict(tcfg), "environment": environment(),
              "channels_last": trainer.channels_last}  # as trained: the trainer may refuse it (memory_format)
    if trainer.stopping():  # the signal came in the last epoch: the stage is saved, then the run stops
        report["stopped_by_signal"] = trainer.stopping()
    return final, report


def dense_teacher(cfg: PipelineConfig, stage: str) -> RepNet:
    """The teacher of distillation: the run's dense net (the train stage's output), fused. A
    stage run in a directory below the run (targets/<target>, search/round-<k>) finds it two
    levels up."""
    run = Path(cfg.run_dir)
    path = next((p for p in (run / "train", run.parent.parent / "train") if (p / "weights.safetensors").exists()),
                run / "train")
    if stage == "train":
        raise RepasError("train.distill: the dense net is the teacher; distillation is for the search and finetune "
                         "stages (search.distill, finetune.distill)")
    if not (path / "weights.safetensors").exists():
        raise RepasError(f"{stage}.distill needs the dense net as its teacher at {path}: run 'repas train' first")
    return fuse(load_model(path)).eval()


def train_stage(cfg: PipelineConfig, *, resume: Resume = False, data: TaskData | None = None) -> Path:
    """Train the dense supernet (gates frozen at all-on)."""
    setup(cfg)
    resume = resolve_resume(resume, cfg, "train", cfg.train, None)
    if resume is None:
        return stage_dir(cfg, "train")
    data = data or get_data(cfg)
    model = build(shaped_spec(cfg, data))
    model.freeze_gates()
    terms = []
    if cfg.train.sandwich:
        terms.append(SandwichRule(model, data.task(cfg.train, model.spec), subnets=cfg.train.sandwich,
                                  smallest=cfg.train.sandwich_min, step=cfg.extract.round_to, seed=cfg.seed))
    model, report = run_training(cfg, "train", model, cfg.train, resume, data=data, terms=terms)
    return save_stage(model, stage_dir(cfg, "train"), report, cfg)


def open_stage(cfg: PipelineConfig, stage: str, source: str | Path | None, tcfg: TrainConfig, resume: Resume,
               data: TaskData | None) -> tuple[Path, bool, RepNet, TaskData] | None:
    """What a training stage on a model directory starts from: the source directory, whether
    to resume, the model and the data (checked to be of the model's task); None when
    ``--resume auto`` finds the stage complete."""
    setup(cfg)
    src = source_dir(cfg, stage, source)
    resumed = resolve_resume(resume, cfg, stage, tcfg, src)
    if resumed is None:
        return None
    model = load_model(src)
    data = data or get_data(cfg)
    check_task(model.spec, data, cfg, src)
    return src, resumed, model, data


def finetune_config(cfg: PipelineConfig) -> TrainConfig:
    """The fine-tune's recipe. ``search.epochs`` is what the search may spend; a method that
    prunes in one shot (eagleeye, uniform, l1 ...) spends none, and its final net fine-tunes
    for them instead, so every method trains the same total epochs."""
    if method_class(cfg.search.method).trains:
        return cfg.finetune
    return dataclasses.replace(cfg.finetune, epochs=cfg.finetune.epochs + cfg.search.epochs)


def finetune_stage(cfg: PipelineConfig, source: str | Path | None = None, *, resume: Resume = False,
                   data: TaskData | None = None) -> Path:
    """Train the extracted (physically smaller) multi-branch net (``finetune_config``)."""
    tcfg = finetune_config(cfg)
    opened = open_stage(cfg, "finetune", source, tcfg, resume, data)
    if opened is None:
        return stage_dir(cfg, "finetune")
    _, resumed, model, data = opened
    # a net of one conv per block (an unstructured method's) fine-tunes with its zero weights held at zero
    terms = [KeepZeros(model)] if one_conv_form(model) and density(model) < 1 else []
    model, report = run_training(cfg, "finetune", model, tcfg, resumed, data=data, terms=terms)
    return save_stage(model, stage_dir(cfg, "finetune"), report, cfg)
