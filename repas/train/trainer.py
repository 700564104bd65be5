"""One trainer for dense training, search and fine-tuning: one consumer of the library API.

A search is training with extra loss terms: a pruning method's ``penalty()`` (PaS's budget
loss, a baseline's regulariser) is added to the task loss and its ``after_step()`` runs
after every update; gates that require grad learn by SGD of their own.

Optimizers and schedulers come from timm, EMA is timm's ModelEmaV3, scalars go to
tensorboard, progress to tqdm. After every epoch the full training state is written
atomically to ``checkpoint.pt`` (loadable with ``weights_only=True``), and with
``checkpoint_every`` every N updates too; SIGINT / SIGTERM save one between two steps and
stop. ``resume=True`` continues from it, mid-epoch included, and ends with the same weights
as an uninterrupted run, because the data order and augmentation of an epoch depend only
on (seed, epoch) and the RNG state, optimizer state and update count are restored.

Under ``torchrun`` (see ``repas.distributed``) the model is wrapped in
DistributedDataParallel, every process takes its slice of each global batch, losses are
averaged over processes, and only rank 0 writes checkpoints, logs and tensorboard.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from tqdm import tqdm

from repas import distributed
from repas.atomic import atomic_torch_save
from repas.config import TrainConfig
from repas.errors import Interrupted, RepasError
from repas.supernet.fused import fuse_repnet
from repas.supernet.gating import gate_widths
from repas.supernet.net import RepNet
from repas.train.checkpoint import check_same_recipe, read_checkpoint, spec_json, to_device
from repas.train.memory_format import channels_last_or_say_why
from repas.train.optim import gate_optimizer, param_groups
from repas.train.signals import StopSignals
from repas.train.tensorboard import open_writer
from repas.train.terms import LossTerm

CHECKPOINT = "checkpoint.pt"


log = logging.getLogger(__name__)


class Trainer:
    """Trains ``model`` on ``task`` (``loss(out, target)``, ``evaluate(model, batches)``)
    with ``cfg``'s recipe; ``terms`` (pruning methods) add their penalty to the loss and
    run their hook after every update. Checkpoints, tensorboard logs go to ``run_dir``."""

    def __init__(self, model: torch.nn.Module, task: Any, cfg: TrainConfig, run_dir: str | Path, *,
                 terms: Sequence[LossTerm] = (), gate_lr: float | None = None, progress: bool | None = None,
                 device: torch.device | None = None, teacher: torch.nn.Module | None = None, label: str = "") -> None:
        self.model, self.task, self.cfg, self.terms = model, task, cfg, list(terms)
        self.label = f"{label}: " if label else ""  # which stage and method each progress line belongs to
        if cfg.distill > 0 and teacher is None:
            raise RepasError(f"distill {cfg.distill} needs a teacher: Trainer(..., teacher=the dense net)")
        # the teacher only predicts: eval mode, no gradients, on the training device
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None and cfg.distill > 0 else None
        self.run_dir = Path(run_dir)
        self.main = distributed.is_main()
        self.progress = progress if self.main else False
        self.device = device or distributed.device()
        model.to(self.device)
        if self.teacher is not None:
            self.teacher.to(self.device)
        self.channels_last = cfg.channels_last and channels_last_or_say_why(model, self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        # what the training steps call: the model, in DDP under torchrun, compiled on request
        self.forward: torch.nn.Module = model
        if distributed.is_distributed() and any(hasattr(t, "batch_loss") for t in self.terms):
            raise RepasError("train.sandwich and the methods that train on the batch (casd, ffr) cannot train under "
                             "torchrun yet: run them in one process (or set train.sandwich: 0)")
        if distributed.is_distributed():
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.forward = torch.compile(self.forward)
        self.optimizer = create_optimizer_v2(param_groups(model, cfg.weight_decay), opt=cfg.opt,
                                             lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
        # gates learn when a term learns them: at gate_lr, else the config's, else the term's default;
        # a method may want their gradients alone (taylor), read in its after_step
        learner = next((t for t in self.terms if getattr(t, "learns_gates", False)), None)
        if gate_lr is None and learner is not None:
            gate_lr = getattr(cfg, "gate_lr", None) or learner.default_gate_lr()
        self.gate_optimizer = gate_optimizer(model, gate_lr) if gate_lr is not None else None
        self.ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
        self.history: list[dict[str, float]] = []
        self.num_updates = self.start_epoch = 0
        self.start_step = 0  # batches of start_epoch already trained (a mid-epoch checkpoint)
        self.partial: dict[str, float] | None = None  # that epoch's loss sums so far
        # cfg.minutes: seconds trained before this fit (a resumed run's), when this fit began,
        # the clock the lr schedule reads, and whether the minutes ran out
        self.elapsed_before = self.clock = 0.0
        self.fit_started: float | None = None
        self.time_up = False
        self.steps_per_epoch = self.updates_before = 0  # (the update count when this fit began)
        self.position = 0  # where the lr schedule was last set (lr_position)
        # Called after every optimizer step with (epoch, step); tests use it to interrupt.
        self.step_hook: Callable[[int, int], None] | None = None
        self.signals = StopSignals()  # SIGINT / SIGTERM: stop between two steps
        self.agreed_stop: int | None = None  # under DDP: a signal any process received

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    # ---- checkpoints ---------------------------------------------------------------
    def state(self, epoch: int, step: int | None = None, partial: dict[str, float] | None = None
              ) -> dict[str, Any]:
        """Everything a resumed run needs; ``step`` (batches of ``epoch`` done) marks a
        mid-epoch checkpoint, None one written at the end of ``epoch``."""
        return {
            "epoch": epoch, "step": step, "partial": partial, "num_updates": self.num_updates,
            "elapsed": self.elapsed(), "time_up": self.time_up, "lr_position": self.position,
            "spec": spec_json(self.model),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "gate_optimizer": self.gate_optimizer.state_dict() if self.gate_optimizer is not None else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "rng": torch.get_rng_state(), "history": self.history,
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "terms": [t.state_dict() for t in self.terms],
            "config": json.dumps(dataclasses.asdict(self.cfg), sort_keys=True),
        }

    def save_checkpoint(self, epoch: int, step: int | None = None, partial: dict[str, float] | None = None) -> None:
        if self.main:
            atomic_torch_save(self.checkpoint_path, self.state(epoch, step, partial))

    def load_checkpoint(self) -> None:
        path = self.checkpoint_path
        state = read_checkpoint(path)
        if state.get("spec") != spec_json(self.model):
            raise RepasError(f"checkpoint {path} was written for another network spec; "
                             "use a fresh run directory or the matching config")
        check_same_recipe(state, path, dataclasses.asdict(self.cfg))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.gate_optimizer is not None and state.get("gate_optimizer") is not None:
            self.gate_optimizer.load_state_dict(state["gate_optimizer"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.module.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        # (a checkpoint of the previous version kept one baseline's regulariser state under "regularizer")
        saved_terms = state.get("terms") or ([state["regularizer"]] if state.get("regularizer") else [])
        for term, saved_term in zip(self.terms, saved_terms):
            term.load_state_dict(to_device(saved_term, self.device))
        self.history = list(state["history"])
        self.num_updates = int(state["num_updates"])
        self.elapsed_before = self.clock = float(state.get("elapsed", 0.0))
        self.time_up = bool(state.get("time_up", False))
        self.position = int(state.get("lr_position", self.num_updates))
        step = state.get("step")
        self.start_epoch = int(state["epoch"]) + (1 if step is None else 0)
        self.start_step = int(step or 0)
        # the partial sums were reduced over processes before saving: rank 0 carries them
        self.partial = dict(state["partial"]) if state.get("partial") and self.main else None

    # ---- training ------------------------------------------------------------------
    def widths(self) -> list[int]:
        return gate_widths(self.model) if isinstance(self.model, RepNet) else []

    def fit(self, train: Iterable, val: Iterable | None = None, resume: bool = False) -> dict[str, Any]:
        """Train for ``cfg.epochs`` over ``train``, any iterable of (input, target) batches
        with a length (a ``torch.utils.data.DataLoader``, or repas's loaders, reshuffled by
        their ``set_epoch``); returns the last epoch's record (metrics, cost, widths)."""
        cfg = self.cfg
        try:
            steps = len(train)
        except TypeError:
            raise RepasError(f"the training batches ({type(train).__name__}) have no len(): the lr schedule needs "
                             "the number of batches an epoch; pass a DataLoader or a list") from None
        if steps == 0:
            raise RepasError(f"batch size {cfg.batch_size} leaves no full training batch")
        self.steps_per_epoch = steps
        schedulers = [create_scheduler_v2(opt, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
                                          min_lr=cfg.min_lr, step_on_epochs=False, updates_per_epoch=steps)[0]
                      for opt in (self.optimizer, self.gate_optimizer) if opt is not None]
        if resume:
            self.load_checkpoint()
            log.info(f"resumed from {self.checkpoint_path} at epoch {self.start_epoch + 1}"
                     + (f", step {self.start_step + 1}" if self.start_step else ""))
        if self.device.type != "cpu" and hasattr(train, "to_device"):
            train.to_device(self.device)  # augment on the GPU: the CPU alone cannot feed it
        world = distributed.world_size()
        if world > 1:
            if cfg.batch_size % world:
                raise RepasError(f"batch size {cfg.batch_size} (the global batch) does not split over {world} "
                                 f"processes: use a multiple of {world}")
            if hasattr(train, "shard"):
                train.shard(distributed.rank(), world)
            elif not isinstance(getattr(train, "sampler", None), torch.utils.data.DistributedSampler):
                raise RepasError("under torchrun each process needs its own slice of the data: give the DataLoader a "
                                 "torch.utils.data.DistributedSampler")
        # the lr is a function of the update count (or the clock); a resumed run's, where it stopped
        position = self.position if resume else self.lr_position()
        for scheduler in schedulers:
            scheduler.step_update(position)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        writer = open_writer(self.run_dir / "tb", self.num_updates, self.main)
        self.signals.catch()
        self.fit_started, self.updates_before = time.perf_counter(), self.num_updates
        try:
            for epoch in range(self.start_epoch, cfg.epochs if not self.time_up else self.start_epoch):
                skip, self.start_step = self.start_step, 0
                record = self._epoch(epoch, train, schedulers, writer, skip)
                self.time_up = self._minutes_up()
                last = epoch + 1 == cfg.epochs or self.time_up
                if val is not None and (last or (cfg.eval_every > 0 and (epoch + 1) % cfg.eval_every == 0)):
                    record.update({f"val_{k}": v for k, v in self.evaluate(val).items()})
                for key, value in record.items():
                    if key != "epoch":
                        writer.add_scalar(f"epoch/{key}", value, epoch)
                for i, w in enumerate(self.widths()):
                    writer.add_scalar(f"width/layer{i:02d}", w, epoch)
                self.history.append(record)
                self.save_checkpoint(epoch)
                log.info(self.label + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in record.items()))
                if self.time_up:
                    log.info(f"{cfg.minutes:g} minutes: stopped after epoch {epoch + 1} of at most {cfg.epochs}")
                    break
                if self.stopping() and epoch + 1 < cfg.epochs:
                    raise Interrupted(self.stopping(), f"after epoch {epoch + 1}; checkpoint saved")
            if distributed.is_distributed():  # a signal in the last step: every process knows
                self.agreed_stop = int(distributed.all_reduce_max([float(self.signals.received or 0)])[0]) or None
        finally:
            self.elapsed_before, self.fit_started = self.elapsed(), None  # the clock stops with the fit
            self.signals.restore()
            writer.close()
        return self.history[-1] if self.history else {}

    def _epoch(self, epoch: int, train: Iterable, schedulers: list[Any], writer: Any, skip: int = 0
               ) -> dict[str, Any]:
        """One epoch, from batch ``skip`` on (the batches before it are drawn and dropped, so
        the data and augmentation stay those of an uninterrupted run)."""
        self.model.train()
        for reshuffled in (train, getattr(train, "sampler", None)):  # ours, or a DistributedSampler
            if hasattr(reshuffled, "set_epoch"):
                reshuffled.set_epoch(epoch)
                break
        sums = dict(self.partial) if skip and self.partial else {"loss": 0.0, "task_loss": 0.0, "n": 0.0,
                                                                 "images": 0.0}
        self.partial = None
        started = time.perf_counter()
        images_now = 0
        disable = None if self.progress is None else not self.progress  # None: only on a terminal
        bar = tqdm(train, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False, disable=disable)
        dev, cfg = self.device, self.cfg
        for step, (images, labels) in enumerate(bar):
            if step < skip:
                continue
            images, labels = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.amp):
                out = self.forward(images)
            task_loss = self.task.loss(out.float(), labels)
            loss = task_loss
            if self.teacher is not None:
                with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.amp):
                    taught = self.teacher(images)
                w = cfg.distill
                loss = (1 - w) * task_loss + w * self.task.distill_loss(out.float(), taught.float(),
                                                                         cfg.distill_temperature)
            for term in self.terms:
                loss = loss + term.penalty()
                extra = getattr(term, "batch_loss", None)  # a term that trains on the batch itself (sandwich)
                if extra is not None:
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.amp):
                        loss = loss + extra(images, out)
            loss_value = loss.item()
            if self._agree(not math.isfinite(loss_value)):
                last = f"the last good checkpoint is {self.checkpoint_path}" if self.checkpoint_path.exists() \
                    else "no checkpoint was written yet"
                raise RepasError(f"loss became {loss_value} at epoch {epoch + 1}, step {step + 1} (on at least one "
                                 f"process); stopped "
                                 f"({last}). Lower the learning rate (or alpha) and rerun.")
            optimizers = [o for o in (self.optimizer, self.gate_optimizer) if o is not None]
            self.model.zero_grad(set_to_none=True)  # gates no optimizer owns too: only this step's gradient
            loss.backward()
            for opt in optimizers:
                opt.step()
            self.num_updates += 1
            for term in self.terms:
                term.after_step(self.num_updates)
            for scheduler in schedulers:
                scheduler.step_update(self.lr_position())
            if self.ema is not None:
                self.ema.update(self.model, step=self.num_updates)
            sums["loss"] += loss_value
            sums["task_loss"] += task_loss.item()
            sums["n"] += 1
            sums["images"] += len(images)
            images_now += len(images)
            if self.num_updates % 20 == 0:
                writer.add_scalar("train/loss", loss_value, self.num_updates)
                writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.num_updates)
                for term in self.terms:
                    for key, value in term.metrics().items():
                        writer.add_scalar(f"train/{key}", value, self.num_updates)
            bar.set_postfix(loss=f"{loss_value:.3f}")
            if self.step_hook is not None:
                self.step_hook(epoch, step)
            last = step + 1 == len(train)
            if self.stopping():
                if not last:  # at the epoch's end, the epoch checkpoint below is the one to keep
                    self._save_mid_epoch(epoch, step + 1, sums)
                    raise Interrupted(self.stopping(), f"at epoch {epoch + 1}, step {step + 1}; checkpoint saved")
            elif cfg.checkpoint_every and self.num_updates % cfg.checkpoint_every == 0 and not last:
                self._save_mid_epoch(epoch, step + 1, sums)
        seconds = time.perf_counter() - started
        loss, task_loss, n, _ = distributed.all_reduce_sum(
            [sums["loss"], sums["task_loss"], sums["n"], sums["images"]])
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": loss / max(n, 1), "task_loss": task_loss / max(n, 1),
                                  "seconds": seconds,
                                  "images_per_s": images_now * distributed.world_size() / max(seconds, 1e-9)}
        for term in self.terms:
            record.update(term.metrics())
        return record

    def elapsed(self) -> float:
        """Wall-clock seconds this training has run, over resumes (the time between a stop and
        its resume does not count)."""
        running = time.perf_counter() - self.fit_started if self.fit_started is not None else 0.0
        return self.elapsed_before + running

    def lr_position(self) -> int:
        """Where the lr schedule stands: the update count, or with ``cfg.minutes`` the further of
        it and the share of the minutes elapsed (as updates of ``cfg.epochs`` epochs), so that
        the schedule ends with whichever runs out first, the minutes or the epochs."""
        total = self.cfg.epochs * self.steps_per_epoch
        by_clock = min(total, int(self.clock * total / (60.0 * self.cfg.minutes))) if self.cfg.minutes else 0
        self.position = max(self.num_updates, by_clock)
        return self.position

    def _minutes_up(self) -> bool:
        """With ``cfg.minutes``, after an epoch: would another one, at this fit's mean step
        time (evaluations included), end past the minutes? Every process decides alike."""
        if not self.cfg.minutes:
            return False
        now = self.elapsed()
        if distributed.is_distributed():
            now = distributed.all_reduce_max([now])[0]
        per_step = (now - self.elapsed_before) / max(self.num_updates - self.updates_before, 1)
        return now + per_step * self.steps_per_epoch > 60.0 * self.cfg.minutes

    def stopping(self) -> int | None:
        """The signal to stop for: this process's, or under DDP the one all processes agreed on."""
        return self.agreed_stop if distributed.is_distributed() else self.signals.received

    def _agree(self, bad_loss: bool) -> bool:
        """Under DDP, one collective a step makes every process see a bad loss or a stop
        signal that any of them saw, so that all stop at the same step (one alone would
        leave the others waiting in the next all-reduce). Returns: is the loss bad anywhere."""
        self.clock = self.elapsed()
        if not distributed.is_distributed():
            return bad_loss
        # the clock too, so that with cfg.minutes every process sets the same lr
        bad, stop, self.clock = distributed.all_reduce_max([float(bad_loss), float(self.signals.received or 0),
                                                           self.clock])
        self.agreed_stop = int(stop) or None
        return bad > 0

    def _save_mid_epoch(self, epoch: int, step: int, sums: dict[str, float]) -> None:
        keys = sorted(sums)
        reduced = dict(zip(keys, distributed.all_reduce_sum([sums[k] for k in keys])))
        self.save_checkpoint(epoch, step, reduced)
        distributed.barrier()

    @torch.no_grad()
    def evaluate(self, loader: Iterable, model: torch.nn.Module | None = None) -> dict[str, float]:
        """The task's metrics of ``model`` (default: the eval model), computed on its fused
        copy where it is a RepNet (equal in eval mode, and several times faster)."""
        model = model if model is not None else self.eval_model
        model = (fuse_repnet(model) if isinstance(model, RepNet) else model).eval()
        if self.device.type == "cpu":
            return self.task.evaluate(model, loader)
        return self.task.evaluate(lambda x: model(x.to(self.device)).float().cpu(), loader)
