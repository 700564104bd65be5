"""One stage writer (``repas.atomic.staged_directory``) for every stage of every model: a
process killed in the middle of writing a stage leaves the stage's previous output whole,
and a training stage's checkpoint and logs stay beside its new output."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import tiny_spec

from repas.config import PipelineConfig
from repas.stages.common import write_stage
from repas.supernet import build


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


# The child writes a new output over OUT and is SIGKILLed (no cleanup, no finally) as soon
# as the writer has put the new weights in place inside its staging directory.
KILL = """
import os, signal, sys
from pathlib import Path
import torch
sys.path.insert(0, {tests!r})
from conftest import tiny_spec
import repas.supernet.model_files as mf
from repas.config import PipelineConfig
from repas.supernet import build

save = mf.save_weights
def save_then_die(model, path):
    save(model, path)
    assert Path(path).exists()
    os.kill(os.getpid(), signal.SIGKILL)
mf.save_weights = save_then_die
{write}
"""

WRITERS = {
    "repas stage": """
from repas.stages.common import write_stage
torch.manual_seed(1)
write_stage(build(tiny_spec()), Path({out!r}), {{"stage": "finetune", "new": True}}, PipelineConfig(seed=1))
""",
    "user model stage": """
import repas.stages.user_model as um
um.save_weights = save_then_die
torch.manual_seed(1)
um.write_user_stage(torch.nn.Conv2d(3, 4, 3), Path({out!r}), {{"stage": "train", "new": True}}, PipelineConfig())
""",
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_stage_killed_mid_write_leaves_its_previous_output_whole(tmp_path, writer):
    out = tmp_path / "run" / "finetune"
    torch_seed_model = build(tiny_spec())
    write_stage(torch_seed_model, out, {"stage": "finetune", "old": True}, PipelineConfig())
    (out / "checkpoint.pt").write_bytes(b"the stage's checkpoint")
    before = digest(out)
    assert {"weights.safetensors", "spec.json", "report.json", "config.json"} <= set(before)
    code = KILL.format(tests=str(Path(__file__).parent), write=WRITERS[writer].format(out=str(out)))
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == -9, child.stderr  # killed by SIGKILL, after writing new weights
    assert digest(out) == before  # every file of the previous output, byte for byte
    assert '"old": true' in (out / "report.json").read_text()
    left = [p.name for p in out.parent.iterdir() if p.name != "finetune"]
    assert len(left) == 1 and left[0].startswith(".finetune.") and left[0].endswith(".new"), left
    # the next write deletes the dead writer's staging directory, not a live writer's
    live = out.parent / f".finetune.{os.getpid()}-0123456789ab.new"
    live.mkdir()
    write_stage(torch_seed_model, out, {"stage": "finetune", "next": True}, PipelineConfig())
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["finetune", live.name])


def test_a_finished_write_replaces_the_outputs_and_keeps_the_checkpoint_and_logs(tmp_path):
    out = tmp_path / "run" / "train"
    write_stage(build(tiny_spec()), out, {"stage": "train", "n": 1}, PipelineConfig())
    (out / "checkpoint.pt").write_bytes(b"ckpt")
    (out / "tb").mkdir()
    (out / "tb" / "events.out").write_bytes(b"logs")
    old_weights = (out / "weights.safetensors").read_bytes()
    model = build(tiny_spec(num_classes=3))
    write_stage(model, out, {"stage": "train", "n": 2}, PipelineConfig())
    assert (out / "weights.safetensors").read_bytes() != old_weights
    assert '"n": 2' in (out / "report.json").read_text()
    assert (out / "checkpoint.pt").read_bytes() == b"ckpt" and (out / "tb" / "events.out").read_bytes() == b"logs"
    assert [p.name for p in out.parent.iterdir()] == ["train"]  # no staging or old copy left beside it
