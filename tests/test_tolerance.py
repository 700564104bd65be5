"""Error-tolerance mode: the smallest net within a validation drop, on a held-out split."""

import json

import pytest
import torch
from conftest import write_fake_fashion
from test_cli import QUICK, run

from repas.cli import main
from repas.config import load_config
from repas.data.fashion_mnist import locate_fashion_mnist
from repas.errors import RepasError
from repas.search.tolerance import shrinking_targets, tolerance_search
from repas.supernet import fuse_repnet, load_model
from repas.task_data import make_task_data


def test_controller_returns_the_last_round_within_the_drop():
    values = {100: 90.0, 80: 89.5, 64: 88.8, 51.2: 86.0, 40.96: 89.9}
    seen = []

    def run_round(target):
        seen.append(round(target, 2))
        return [int(target)], target, values[round(target, 2)], f"net@{target:g}"

    targets = shrinking_targets(125.0, 0.8, 0.3)
    assert [round(t, 2) for t in targets] == [100, 80, 64, 51.2, 40.96]
    state, best, rounds = tolerance_search(90.0, targets, run_round, max_drop=1.5)
    assert seen == [100, 80, 64, 51.2]  # stops at the first round that broke it, 40.96 never runs
    assert state == "net@64" and best.target == 64 and best.drop == pytest.approx(1.2)
    assert rounds[-1].target < best.target and rounds[-1].drop > 1.5 and not rounds[-1].within
    # even the first round broke it: nothing is returned, the caller keeps the dense net
    state, best, rounds = tolerance_search(90.0, targets, run_round, max_drop=-1.0)
    assert state is None and best is None and len(rounds) == 1
    # a target that cannot be met ends the rounds; the last within is kept
    state, best, _ = tolerance_search(90.0, targets, lambda t: None if t < 70 else run_round(t), 5.0)
    assert state == "net@80"


def test_validation_split_is_held_out_of_training_the_same_way_every_time(tmp_path):
    data_dir = write_fake_fashion(tmp_path / "data", n_train=200)
    cfg = load_config(None, [f"data.root={data_dir}", "search.max_drop=1"])
    assert cfg.val_fraction == 0.1  # error-tolerance mode holds out 10% unless told otherwise
    a, b = make_task_data(cfg), make_task_data(cfg)
    assert len(a.val) == 20 and len(a.data.train) == 180
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.data.train.images, b.data.train.images)
    rows = {bytes(x.flatten().numpy()) for x in a.data.train.images}
    assert not any(bytes(x.flatten().numpy()) in rows for x in a.val.images)  # disjoint
    plain = make_task_data(load_config(None, [f"data.root={data_dir}"]))
    assert plain.val is None and len(plain.data.train) == 200
    with pytest.raises(Exception, match="set data.val_fraction"):
        plain.val_batches(cfg.search)


@pytest.mark.parametrize("argv,message", [
    (["--max-drop", "-1"], "max_drop must be >= 0"),
    (["--max-drop", "1", "--set", "search.shrink=1.5"], "shrink and min_target must lie in (0, 1)"),
    (["--set", "data.val_fraction=1"], "val_fraction must be in [0, 1)"),
])
def test_bad_tolerance_settings_are_clear_errors(argv, message, tmp_path, capsys):
    code, _, err = run(capsys, "search", "--run-dir", tmp_path, *argv, *QUICK)
    assert code == 2 and message in err


def _real_fashion_mnist():
    try:
        return locate_fashion_mnist(install=False)
    except RepasError:
        pytest.skip("Debian package dataset-fashion-mnist is not installed (make test installs it)")


@pytest.mark.parametrize("method", ["pas", "uniform"])
def test_tolerance_search_returns_the_smallest_net_within_the_drop(method, tmp_path, capsys):
    """Real Fashion-MNIST (1,500 training images, 300 of them held out for validation).
    A first search with no real limit gives every round's drop; a second one, with the
    limit set between two rounds' drops, must stop exactly there: the net it returns is
    within the drop, and the next round (a smaller target) broke it."""
    root = _real_fashion_mnist()
    common = ["--data", root, "--run-dir", tmp_path / "run", *QUICK, "--set", "data.val_fraction=0.2",
              "--set", "extract.round_to=4", "--set", "data.train_subset=1500", "--set", "data.test_subset=200"]
    assert main([str(a) for a in ("train", *common, "--epochs", "6")]) == 0

    def search(max_drop):
        # alpha 1: at alpha 5 a single round from 2x the target collapses PaS's gates (a drop of
        # 40+ points at 0.5x), and then no later round drops more, which this test needs
        code, _, err = run(capsys, "search", *common, "--method", method, "--max-drop", max_drop,
                           "--set", "search.shrink=0.5", "--set", "search.alpha=1")
        assert code == 0, err
        return json.loads((tmp_path / "run" / "search" / "report.json").read_text())["tolerance"]

    free = search(100.0)["rounds"]
    assert len(free) == 4 and all(r["within"] for r in free)  # 0.5, 0.25, 0.125, 0.0625 x dense
    drops = [r["drop"] for r in free]
    k = next((k for k in range(len(drops) - 1) if drops[k + 1] > max(drops[:k + 1])), None)
    assert k is not None, f"pruning to 6% of the MACs should cost more accuracy than to 50%: drops {drops}"
    max_drop = max(drops[:k + 1])
    tol = search(max_drop)
    accepted, broke = tol["accepted"], tol["broke"]
    assert accepted == free[k] and accepted["drop"] <= max_drop  # the rounds are deterministic
    assert broke == {**free[k + 1], "within": False} and broke["drop"] > max_drop
    assert broke["target"] < accepted["target"] and broke["cost"] < accepted["cost"]
    assert [r["within"] for r in tol["rounds"]] == [True] * (k + 1) + [False]
    # the extract stage cuts the very net that was validated: same widths, same validation metric
    assert main([str(a) for a in ("extract", *common)]) == 0
    sub = load_model(tmp_path / "run" / "extract").eval()
    assert sub.spec.widths == accepted["widths"]
    cfg = load_config(None, [f"data.root={root}", *(v for f, v in zip(common, common[1:]) if f == "--set")])
    task_data = make_task_data(cfg)
    value = task_data.task(cfg.search, sub.spec).evaluate(fuse_repnet(sub), task_data.val_batches(cfg.search))["top1"]
    assert value == pytest.approx(accepted["value"], abs=1e-9)
    assert tol["reference"] - value <= max_drop
