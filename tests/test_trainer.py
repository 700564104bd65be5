"""The trainer: exact resume, NaN stop with the last checkpoint kept, logs, search budget."""

import dataclasses
import math

import pytest
import torch
from conftest import tiny_spec

from repas.config import SearchConfig, TrainConfig
from repas.data import TensorImages, TensorLoader
from repas.errors import RepasError
from repas.search import Budget, create_method, spec_cost
from repas.supernet import build
from repas.tasks import ClassificationTask
from repas.train import CHECKPOINT, Trainer


def toy_data(n=96, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (n,), generator=gen)
    images = torch.randint(0, 80, (n, 3, 12, 12), generator=gen, dtype=torch.uint8)
    for i, y in enumerate(labels):
        images[i, :, 2 * y:2 * y + 2] = 255
    return TensorImages(images, labels, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), [str(i) for i in range(5)])


def make_trainer(run_dir, cfg, budget=False, seed=0, spec=None):
    torch.manual_seed(seed)
    model = build(spec or tiny_spec())
    terms = [create_method("pas", model, Budget(model.spec, 0.5 * spec_cost(model.spec), alpha=5.0))] if budget else []
    if not budget:
        model.freeze_gates()
    return Trainer(model, ClassificationTask(0.1), cfg, run_dir, terms=terms, gate_lr=0.05,
                   progress=False)


def loader(seed=0):
    return TensorLoader(toy_data(), 16, shuffle=True, augment=True, seed=seed, drop_last=True)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("budget,every", [(False, 0), (True, 0), (False, 1), (True, 2)])
def test_interrupted_and_resumed_run_ends_with_identical_weights(tmp_path, budget, every):
    """A crash at epoch 2, step 3: with epoch checkpoints the partial epoch is redone; with
    checkpoint_every the run resumes mid-epoch (the data of the steps before is skipped)."""
    cfg = SearchConfig(epochs=3, lr=0.05, ema=not budget, checkpoint_every=every) if budget else \
        TrainConfig(epochs=3, lr=0.05, ema=True, checkpoint_every=every)
    full = make_trainer(tmp_path / "full", cfg, budget)
    full.fit(loader())

    first = make_trainer(tmp_path / "cut", cfg, budget)

    def stop(epoch, step):
        if epoch == 1 and step == 2:  # mid-epoch: the partial epoch is lost and redone
            raise Interrupt

    first.step_hook = stop
    with pytest.raises(Interrupt):
        first.fit(loader())
    saved = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)
    assert (saved["epoch"], saved["step"]) == ((1, 2) if every else (0, None))
    torch.manual_seed(1234)  # a resumed process starts with other RNG state
    second = make_trainer(tmp_path / "cut", cfg, budget, seed=99)
    second.fit(loader(), resume=True)
    assert (second.start_epoch, second.start_step) == (1, 0)  # both consumed by the run
    assert [h["loss"] for h in second.history] == [h["loss"] for h in full.history]
    a, b = full.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if not budget:
        ea, eb = full.ema.module.state_dict(), second.ema.module.state_dict()
        assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_search_moves_cost_toward_target(tmp_path):
    t = make_trainer(tmp_path, SearchConfig(epochs=4, lr=0.02, gate_lr=0.2, alpha=20.0), budget=True)
    start = spec_cost(t.model.spec)
    record = t.fit(loader())
    assert record["macs"] < 0.8 * start
    assert sum(t.widths()) < sum(t.model.spec.widths)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    t = make_trainer(tmp_path, TrainConfig(epochs=3, lr=0.05))
    real_loss = t.task.loss
    calls = {"n": 0}

    def loss(out, y):
        calls["n"] += 1
        value = real_loss(out, y)
        return value * float("nan") if calls["n"] > 8 else value  # epoch 2 (6 steps an epoch)

    t.task.loss = loss
    with pytest.raises(RepasError, match="loss became nan.*last good checkpoint"):
        t.fit(loader())
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_corrupt_or_missing_checkpoint_gives_clear_error(tmp_path):
    t = make_trainer(tmp_path, TrainConfig(epochs=1))
    with pytest.raises(RepasError, match="no checkpoint"):
        t.fit(loader(), resume=True)
    (tmp_path / CHECKPOINT).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(RepasError, match="corrupt or truncated"):
        t.fit(loader(), resume=True)


def test_tensorboard_scalars_are_written(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = make_trainer(tmp_path, SearchConfig(epochs=2, lr=0.02), budget=True)
    t.fit(loader(), TensorLoader(toy_data(32, 1), 16))
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"epoch/loss", "epoch/val_top1", "epoch/macs", "width/layer00"} <= tags
    assert len(acc.Scalars("epoch/val_top1")) == 2


# tiny_spec with 16 channels before its stride-2 block: channels_last is allowed on every CPU
WIDE_INPUT = dataclasses.replace(tiny_spec(), layers=[dataclasses.replace(tiny_spec().layers[0], out_channels=16),
                                                      *tiny_spec().layers[1:]])


def test_gpu_speed_options_train_the_same_model(tmp_path, monkeypatch):
    """bf16 autocast + channels_last and torch.compile are GPU speed options; on the CPU their
    logic is checked: the same losses as float32 (bf16: within 2e-2), channels_last weights,
    and the compiled module is the one that trains (with the eager backend: inductor takes a
    minute to compile on this CPU)."""
    plain = make_trainer(tmp_path / "a", TrainConfig(epochs=2, lr=0.05), spec=WIDE_INPUT)
    plain.fit(loader())
    fast = make_trainer(tmp_path / "b", TrainConfig(epochs=2, lr=0.05, amp=True, channels_last=True),
                        spec=WIDE_INPUT)
    assert fast.channels_last
    assert fast.model.blocks[1].branches["conv"].conv.weight.is_contiguous(memory_format=torch.channels_last)
    fast.fit(loader())
    for a, b in zip(plain.history, fast.history):
        assert abs(a["loss"] - b["loss"]) < 2e-2 and a["loss"] != b["loss"]  # bf16 did run
        assert b["images_per_s"] > 0
    compiled = []
    real_compile = torch.compile

    def eager_compile(module, **kwargs):
        compiled.append(module)
        return real_compile(module, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    comp = make_trainer(tmp_path / "c", TrainConfig(epochs=2, lr=0.05, compile=True), spec=WIDE_INPUT)
    comp.fit(loader())
    assert compiled == [comp.model] and comp.forward is not comp.model
    for a, b in zip(plain.history, comp.history):
        assert abs(a["loss"] - b["loss"]) < 1e-5


class Foreign:
    """A class no repas checkpoint holds: weights_only refuses to unpickle it."""


def test_a_checkpoint_with_foreign_pickled_objects_is_refused_not_called_corrupt(tmp_path):
    t = make_trainer(tmp_path, TrainConfig(epochs=1))
    torch.save({"model": {}, "payload": Foreign()}, tmp_path / CHECKPOINT)
    with pytest.raises(RepasError, match="was refused: it holds pickled Python objects") as info:
        t.fit(loader(), resume=True)
    assert "corrupt" not in str(info.value) and "delete it" not in str(info.value)


def test_any_sized_iterable_of_batches_trains(tmp_path):
    """A plain DataLoader (no set_epoch, no shard) and a list both work; no len() is a clear error."""
    data = toy_data()
    plain = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.normalize(data.images), data.labels),
                                        batch_size=16, shuffle=True)
    t = make_trainer(tmp_path / "dl", TrainConfig(epochs=2, lr=0.05))
    t.fit(plain)
    assert len(t.history) == 2 and t.num_updates == 2 * len(plain)
    t = make_trainer(tmp_path / "list", TrainConfig(epochs=1, lr=0.05))
    t.fit(list(plain))
    assert t.num_updates == len(plain)
    with pytest.raises(RepasError, match="have no len"):
        make_trainer(tmp_path / "gen", TrainConfig(epochs=1)).fit(iter(list(plain)))


def test_distillation_pulls_the_student_to_its_teacher(tmp_path):
    """distill=1: the loss is the teacher term alone, and training brings the student's
    predictions to the teacher's (which ignores the labels: it would not happen by the task)."""
    task = ClassificationTask(0.0)
    logits = torch.randn(8, 5)
    assert float(task.distill_loss(logits, logits, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(task.distill_loss(logits, -logits, 4.0)) > 0.1
    torch.manual_seed(3)
    teacher = build(tiny_spec()).eval()
    data = toy_data()
    x = data.normalize(data.images[:64])

    def gap(model):
        with torch.no_grad():
            return float(task.distill_loss(model.eval()(x), teacher(x), 1.0))

    cfg = TrainConfig(epochs=3, lr=0.05, distill=1.0, distill_temperature=1.0)
    with pytest.raises(RepasError, match="needs a teacher"):
        make_trainer(tmp_path / "none", cfg)
    t = make_trainer(tmp_path / "kd", TrainConfig(epochs=1, lr=0.05))
    model = t.model
    before = gap(model)
    t = Trainer(model, task, cfg, tmp_path / "kd2", teacher=teacher, progress=False)
    t.fit(loader())
    assert gap(t.model) < 0.5 * before


def test_pas_gates_learn_at_the_configs_gate_lr_else_at_one_scaled_to_the_gated_channels(tmp_path):
    torch.manual_seed(0)
    model = build(tiny_spec())
    method = create_method("pas", model, Budget(model.spec, 0.5 * spec_cost(model.spec), alpha=5.0))
    t = Trainer(model, ClassificationTask(0.1), SearchConfig(epochs=1, lr=0.02, gate_lr=0.3), tmp_path,
                terms=[method], progress=False)
    assert t.gate_optimizer is not None and t.gate_optimizer.param_groups[0]["lr"] == 0.3
    t.fit(loader())
    assert all(float((g.weight.detach() - 1.0).abs().max()) > 0 for g in model.gate_modules())
    gated = sum(lay.out_channels for lay in model.spec.layers)  # every layer of the tiny net is gated
    for cfg in (TrainConfig(epochs=1), SearchConfig(epochs=1)):  # no gate_lr / gate_lr unset (None)
        unset = Trainer(build(tiny_spec()), ClassificationTask(0.1), cfg, tmp_path / "x",
                        terms=[create_method("pas", model, method.budget)], progress=False)
        assert unset.gate_optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * gated / 272)


def test_eval_every_evaluates_every_n_epochs_and_always_after_the_last(tmp_path):
    val = TensorLoader(toy_data(32, seed=1), 16)
    seen = {}
    for every in (1, 2, 0):
        t = make_trainer(tmp_path / str(every), TrainConfig(epochs=3, lr=0.05, eval_every=every))
        t.fit(loader(), val)
        seen[every] = ["val_top1" in h for h in t.history]
    assert seen == {1: [True, True, True], 2: [False, True, True], 0: [False, False, True]}


class FakeClock:
    """The trainer's clock, advanced one second by every optimizer step (through step_hook)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


def timed_trainer(run_dir, monkeypatch, clock, cfg, lrs=None, stop_at=None):
    import repas.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "time", clock)
    trainer = make_trainer(run_dir, cfg)

    def tick(epoch, step):
        clock.now += 1.0
        if lrs is not None:
            lrs.append(trainer.optimizer.param_groups[0]["lr"])
        if (epoch, step) == stop_at:
            raise Interrupt

    trainer.step_hook = tick
    return trainer


def test_minutes_drive_the_lr_schedule_and_stop_before_an_epoch_that_would_not_fit(tmp_path, monkeypatch):
    """6 steps an epoch at 1 s a step, 30 s allowed, at most 100 epochs: 5 epochs fit (a sixth
    would end at 36 s); the cosine runs on the clock, so it nearly ends by then, whereas by update
    count it would have covered 5 of 100 epochs."""
    cfg = TrainConfig(epochs=100, lr=0.05, minutes=0.5, eval_every=0)
    lrs: list[float] = []
    trainer = timed_trainer(tmp_path / "run", monkeypatch, FakeClock(), cfg, lrs)
    trainer.fit(loader())
    assert len(trainer.history) == 5 and len(lrs) == 30
    # after update k the clock read k - 1 s: the lr is the cosine at (k - 1) / 30 of the way
    for k in (6, 15, 30):
        at = (k - 1) * 600 // 30
        assert lrs[k - 1] == pytest.approx(0.05 * (1 + math.cos(math.pi * at / 600)) / 2, rel=1e-6)
    assert lrs[-1] < 0.005 * 0.05 and trainer.time_up
    # where the epochs run out before the minutes, the schedule follows the epochs to its end
    lrs.clear()
    trainer = timed_trainer(tmp_path / "short", monkeypatch, FakeClock(), dataclasses.replace(cfg, epochs=2), lrs)
    trainer.fit(loader())
    assert len(trainer.history) == 2 and not trainer.time_up and lrs[-1] == 0.0 and lrs[5] > 0.4 * 0.05
    with pytest.raises(RepasError, match="minutes"):
        TrainConfig(minutes=-1)


def test_a_resumed_timed_run_ends_as_an_uninterrupted_one_and_downtime_does_not_count(tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=100, lr=0.05, minutes=0.5, eval_every=0, checkpoint_every=1)
    full = timed_trainer(tmp_path / "full", monkeypatch, FakeClock(), cfg)
    full.fit(loader())

    clock = FakeClock()
    cut = timed_trainer(tmp_path / "cut", monkeypatch, clock, cfg, stop_at=(2, 3))
    with pytest.raises(Interrupt):
        cut.fit(loader())
    clock.now += 3600.0  # an hour stopped: not training time
    again = timed_trainer(tmp_path / "cut", monkeypatch, clock, cfg)
    again.fit(loader(), resume=True)
    assert len(again.history) == len(full.history) == 5
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[name]), name
    # a run that used its minutes is complete: resuming it trains nothing more
    done = timed_trainer(tmp_path / "cut", monkeypatch, clock, cfg)
    before = clock.now
    done.fit(loader(), resume=True)
    assert clock.now == before and len(done.history) == 5
