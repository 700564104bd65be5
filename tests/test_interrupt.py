"""Ctrl-C and crashes: the last complete checkpoint stays loadable, nothing is half-written."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from repas import atomic
from repas.atomic import atomic_write_bytes


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "weights.bin"
    atomic_write_bytes(path, b"old complete file")

    def fail(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "fsync", fail)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b"new file, never finished")
    assert path.read_bytes() == b"old complete file"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]  # no temporary left behind


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_mid_run_exits_cleanly_and_resumes(tmp_path, fake_fashion, sig):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "repas", "train", "--data", str(fake_fashion), "--run-dir", str(run_dir),
           "--epochs", "200", "--threads", "1", "--set", "train.batch_size=32"]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    checkpoint = run_dir / "train" / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert checkpoint.exists(), proc.communicate()[1]
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig  # 130 for Ctrl-C, 143 for SIGTERM
    assert "checkpoint saved" in err and "--resume auto" in err and "Traceback" not in err
    state = torch.load(checkpoint, weights_only=True)
    epoch, step = state["epoch"], state["step"]  # the signal saved a checkpoint where it stopped
    resumed = subprocess.run(cmd[:-4] + ["--epochs", str(epoch + 2), "--resume", "--set", "train.batch_size=32"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    where = f"at epoch {epoch + 1}, step {step + 1}" if step else f"at epoch {epoch + 2}"
    assert f"resumed from {checkpoint} {where}" in resumed.stdout
    assert torch.load(checkpoint, weights_only=True)["epoch"] == epoch + 1
