"""Preemption: a search killed at a random step (SIGKILL) or stopped by SIGTERM resumes with
``--resume auto`` and ends with exactly the weights of an uninterrupted run."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import write_fake_fashion
from safetensors.torch import load_file

from repas.cli import main

EPOCHS = "4"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("preempt")
    data = write_fake_fashion(tmp / "data", n_train=512)
    code = main(["train", *_common(data, tmp / "trained"), "--epochs", "1"])
    assert code == 0
    return data, tmp / "trained"


def _common(data, run_dir):
    return ["--data", str(data), "--run-dir", str(run_dir), "--threads", "1", "--set", "train.batch_size=32",
            "--set", "search.batch_size=32", "--set", "search.checkpoint_every=1"]


def _search_argv(data, run_dir):  # PaS: a search that trains, so there is something to kill
    return ["search", *_common(data, run_dir), "--method", "pas", "--epochs", EPOCHS]


def _copy_trained(trained_dir, run_dir):
    shutil.copytree(trained_dir / "train", run_dir / "train")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_search_resumes_to_identical_weights(sig, trained, tmp_path, capsys):
    data, trained_dir = trained
    full, cut = tmp_path / "full", tmp_path / "cut"
    for d in (full, cut):
        _copy_trained(trained_dir, d)
    assert main(_search_argv(data, full)) == 0

    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "repas", *_search_argv(data, cut)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    checkpoint = cut / "search" / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(random.Random().uniform(0.0, 1.5))  # a random step of the 64
    assert proc.poll() is None, "the search finished before it could be killed: make it longer"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + sig), err
    state = torch.load(checkpoint, weights_only=True)  # complete, whenever the kill came
    assert (state["epoch"], state["step"]) != (int(EPOCHS) - 1, None)  # stopped before the end
    if sig == signal.SIGTERM:
        assert "checkpoint saved" in err and "Traceback" not in err
    assert not (cut / "search" / "weights.safetensors").exists()

    capsys.readouterr()
    assert main([*_search_argv(data, cut), "--resume", "auto"]) == 0
    # it continued from the checkpoint (a restart from scratch would also end equal)
    where = f"epoch {state['epoch'] + 1}, step {state['step'] + 1}" if state["step"] else \
        f"epoch {state['epoch'] + 2}"
    assert f"resumed from {checkpoint} at {where}" in capsys.readouterr().out
    a, b = load_file(full / "search" / "weights.safetensors"), load_file(cut / "search" / "weights.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_auto_skips_complete_stages_and_starts_missing_ones(trained, tmp_path, capsys):
    data, trained_dir = trained
    _copy_trained(trained_dir, tmp_path)
    before = (tmp_path / "train" / "weights.safetensors").read_bytes()
    assert main(["train", *_common(data, tmp_path), "--epochs", "1", "--resume", "auto"]) == 0
    assert "complete" in capsys.readouterr().out
    assert (tmp_path / "train" / "weights.safetensors").read_bytes() == before
    # no search checkpoint yet: auto starts the search instead of failing
    assert main([*_search_argv(data, tmp_path)[:-2], "--epochs", "1", "--resume", "auto"]) == 0
    assert (tmp_path / "search" / "report.json").exists()


def test_a_checkpoint_save_interrupted_midway_leaves_the_previous_one(tmp_path, monkeypatch):
    from test_trainer import loader, make_trainer

    from repas import atomic
    from repas.config import TrainConfig
    from repas.train import CHECKPOINT

    cfg = TrainConfig(epochs=2, lr=0.05, checkpoint_every=1)
    full = make_trainer(tmp_path / "full", cfg)
    full.fit(loader())
    cut = make_trainer(tmp_path / "cut", cfg)

    def fail(fd):
        raise KeyboardInterrupt  # the signal arrives while the checkpoint is being written

    def hook(epoch, step):
        if (epoch, step) == (1, 2):
            monkeypatch.setattr(atomic.os, "fsync", fail)

    cut.step_hook = hook
    with pytest.raises(KeyboardInterrupt):
        cut.fit(loader())
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "cut").iterdir() if p.name != "tb"] == [CHECKPOINT]  # no temporary
    state = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 2)  # the save before the interrupted one
    again = make_trainer(tmp_path / "cut", cfg, seed=7)
    again.fit(loader(), resume=True)
    a, b = full.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_auto_redoes_a_stage_whose_recipe_or_source_changed(trained, tmp_path, capsys):
    data, trained_dir = trained
    _copy_trained(trained_dir, tmp_path)
    argv = [*_search_argv(data, tmp_path)[:-2], "--epochs", "1"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--resume", "auto"]) == 0
    assert "search: complete" in capsys.readouterr().out  # same recipe, same source: skipped
    # another recipe: not complete, and its checkpoint cannot be continued: a clear error
    assert main([*argv, "--set", "search.alpha=2", "--resume", "auto"]) == 2
    assert "training config changed" in capsys.readouterr().err
    time.sleep(0.05)
    os.utime(tmp_path / "train" / "report.json")  # the trained net is newer than the search
    assert main([*argv, "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert "search: complete" not in out and "starting the stage over" in out
    assert main([*argv, "--resume", "auto"]) == 0
    assert "search: complete" in capsys.readouterr().out
