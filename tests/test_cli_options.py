"""The CLI's options, configs and info on small inputs: flags read as written, a traceback
only with --debug, the shipped configs load, and a rerun says what it replaces."""

import json

import pytest
import torch
from test_cli import QUICK, run

from repas.search import method_class
from repas.supernet import load_model


def test_debug_shows_the_traceback(tmp_path):
    """The real command line, in its own process: one line and exit 2 without --debug, the
    traceback (ending in the same error) with it. 'repas predict' fails without importing
    torch (a second, not ten); its errors go through the same main() as every command's."""
    import subprocess
    import sys
    from pathlib import Path

    def repas(*argv):
        return subprocess.run([sys.executable, "-m", "repas", *argv], capture_output=True, text=True, timeout=120,
                              cwd=Path(__file__).resolve().parent.parent)  # this checkout's repas

    argv = ["predict", str(tmp_path / "nowhere"), str(tmp_path / "x.png")]
    plain = repas(*argv)
    assert plain.returncode == 2, plain.stderr
    assert plain.stderr.startswith("repas: error: ") and "is not a repas bundle" in plain.stderr
    assert plain.stderr.count("\n") == 1 and "Traceback" not in plain.stderr
    debug = repas(*argv, "--debug")
    assert debug.returncode != 0
    assert debug.stderr.startswith("Traceback (most recent call last)"), debug.stderr
    last = debug.stderr.strip().splitlines()[-1]
    assert last.startswith("repas.errors.RepasError: ") and "is not a repas bundle" in last


def test_minutes_train_a_stage_on_the_clock(tmp_path, fake_fashion, capsys):
    """--minutes reaches the stage's config: in 60 microseconds no epoch fits, so the first of
    five is the last (the limit is checked after each epoch; 0.001 min could fit two on a fast CPU)."""
    code, _, err = run(capsys, "train", "--data", fake_fashion, "--run-dir", tmp_path, "--epochs", "5",
                       "--minutes", "0.000001", *QUICK)
    assert code == 0, err
    report = json.loads((tmp_path / "train" / "report.json").read_text())
    assert report["config"]["minutes"] == 1e-6 and len(report["history"]) == 1


def test_block_is_chosen_by_configuration(tmp_path, fake_fashion, capsys):
    code, _, err = run(capsys, "train", "--data", fake_fashion, "--run-dir", tmp_path, "--epochs", "1", *QUICK,
                       "--set", "model.branches=[conv, conv1x1, conv1x1_kxk, conv1x1_avg, identity]")
    assert code == 0, err
    spec = load_model(tmp_path / "train").spec
    assert spec.layers[0].branches == ["conv", "conv1x1", "conv1x1_kxk", "conv1x1_avg"]  # stem: no identity
    assert spec.layers[2].branches == ["conv", "conv1x1", "conv1x1_kxk", "conv1x1_avg", "identity"]
    code, _, err = run(capsys, "train", "--data", fake_fashion, "--run-dir", tmp_path, *QUICK,
                       "--set", "model.branches=[conv, dbb]")
    assert code == 2 and "unknown branch 'dbb'" in err


def test_flag_values_are_taken_as_written_and_numbers_checked(capsys):
    from repas.config import load_config

    assert load_config(values={"run_dir": "010", "data.root": "~"}).run_dir == "010"
    assert load_config(values={"data.root": "~"}).data.root == "~"
    code, _, err = run(capsys, "train", "--set", "train.batch_size=0")
    assert code == 2 and "batch_size must be >= 1" in err
    code, _, err = run(capsys, "train", "--set", "train.lr=[1")
    assert code == 2 and "not valid YAML" in err


def test_info_counts_grouped_layers_with_the_cost_function(tmp_path, capsys):
    from repas.search.cost import layer_costs
    from repas.spec import ArchSpec, LayerSpec

    spec = ArchSpec(name="grouped", in_channels=8, input_size=(8, 8), num_classes=3,
                    layers=[LayerSpec(8, branches=["conv"], groups=4, gated=False), LayerSpec(16, branches=["conv"])])
    (tmp_path / "spec.json").write_text(spec.to_json())
    code, out, _ = run(capsys, "info", tmp_path)
    assert code == 0
    grouped_macs = 3 * 3 * 8 * 8 * 8 * 8 / 4
    assert layer_costs(spec, spec.widths)[0] == grouped_macs
    assert f"{grouped_macs:,.0f}" in out.splitlines()[2]


def test_info_on_a_searched_supernet_shows_the_widths_its_gates_keep(tmp_path, capsys):
    from conftest import tiny_spec

    from repas.supernet import build, save_model

    model = build(tiny_spec())
    with torch.no_grad():
        model.gate_modules()[1].weight[:5] = 0.0  # 12 -> 7 channels on
    save_model(model, tmp_path)
    code, out, _ = run(capsys, "info", tmp_path)
    assert code == 0 and "widths are those its gates keep" in out
    assert "7/12" in out.splitlines()[3]


CONFIGS = sorted((__import__("pathlib").Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_names_real_methods(path):
    from repas.config import load_config
    from repas.graph.files import build_from

    cfg = load_config(path)
    for name in [cfg.search.method, *(cfg.search.compare or [])]:
        method_class(name.partition("@")[0])  # a RepasError for an unknown name (method@precision: the method)
    if cfg.model.builder:
        assert sum(p.numel() for p in build_from(cfg.model.builder, cfg.model.kwargs or {}).parameters()) > 0


def test_rerunning_a_finished_stage_says_so_first(fake_fashion, tmp_path, capsys):
    argv = ["train", "--data", fake_fashion, "--run-dir", tmp_path, "--epochs", "1", *QUICK,
            "--set", "data.train_subset=128", "--set", "train.eval_every=0"]
    code, out, err = run(capsys, *argv)
    assert code == 0 and "holds a finished stage" not in out, err
    assert "train: epoch=1 " in out  # each progress line names its stage
    code, out, err = run(capsys, *argv)
    assert code == 0 and "repas: warning: train: " in out and "--resume auto" in out
    assert out.index("holds a finished stage") < out.index("epoch")  # said before it trains, not after
    code, out, err = run(capsys, *argv, "--resume", "auto")
    assert code == 0 and "holds a finished stage" not in out and "skipped (--resume auto)" in out
