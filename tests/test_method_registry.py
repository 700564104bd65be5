"""A pruning method registered from outside repas (here, this file) runs through the CLI's
search, extract and fuse with no edit to repas, and is listed and validated by name."""

import json

import pytest
import torch

from repas.cli import main
from repas.search import PruningMethod, list_methods, register_method
from repas.search.allocation import uniform_masks
from repas.supernet import load_model

QUICK = ["--threads", "2", "--epochs", "1", "--set", "train.batch_size=64", "--set", "search.batch_size=64"]


@register_method("test-last-channels")
class LastChannels(PruningMethod):
    """Keeps the last channels of every layer, the opposite of uniform: an allocation no
    built-in method would make, so the test sees that this method decided."""

    summary = "test method: the last channels of every layer, one width multiplier"

    def select(self, inputs: torch.Tensor | None = None):
        scores = [torch.arange(lay.out_channels, dtype=torch.float32) for lay in self.model.spec.layers]
        return uniform_masks(self.model.spec, scores, self.budget, step=self.step, tolerance=self.tolerance), scores


def test_a_method_registered_here_runs_through_search_extract_and_fuse(fake_fashion, tmp_path, capsys):
    run = ["--run-dir", str(tmp_path), "--data", str(fake_fashion)]
    assert main(["train", *run, *QUICK]) == 0
    assert main(["search", *run, *QUICK, "--method", "test-last-channels", "--target", "0.5"]) == 0
    assert main(["extract", *run]) == 0
    assert main(["fuse", *run, "--from", str(tmp_path / "extract")]) == 0
    searched = json.loads((tmp_path / "search" / "report.json").read_text())
    assert searched["method"] == "test-last-channels"
    assert 0.97 * searched["target"] <= searched["searched_macs"] <= searched["target"]
    gates = load_model(tmp_path / "search").gate_modules()
    for gate, width in zip(gates, searched["widths"]):  # the last channels are the kept ones
        kept = torch.nonzero(gate.mask()).flatten().tolist()
        assert kept == list(range(gate.weight.numel() - width, gate.weight.numel()))
    fused = load_model(tmp_path / "fuse")
    assert fused.spec.widths == searched["widths"] and all(b.fused for b in fused.blocks)
    capsys.readouterr()
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert "test-last-channels" in listed and "the last channels of every layer" in listed


def test_an_unknown_method_is_one_line_naming_the_nearest(capsys):
    assert "test-last-channels" in list_methods()
    assert main(["search", "--method", "test-last-chanels"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'test-last-channels'" in err and "pas" in err


def test_register_method_takes_pruning_methods_only():
    with pytest.raises(TypeError, match="PruningMethod subclass"):
        register_method("not-a-method")(object)
