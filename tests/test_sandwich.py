"""The sandwich rule (train.sandwich): each subnet pass is the extracted subnet's, the full
net's BatchNorm statistics and gates are untouched, and the dense stage trains with it."""

import json

import pytest
import torch
from conftest import randomize_bn, tiny_spec
from test_trainer import loader

from repas.cli import main
from repas.config import TrainConfig, load_config
from repas.errors import RepasError
from repas.search.extract import extract_subnet
from repas.search.importance import l1_norms
from repas.search.sandwich import SandwichRule
from repas.stages.common import get_data
from repas.stages.training import run_training
from repas.supernet import build, load_model
from repas.task_data import shaped_spec
from repas.tasks import ClassificationTask
from repas.train import Trainer


def dense_net(seed=0):
    torch.manual_seed(seed)
    model = build(tiny_spec())
    randomize_bn(model, seed)
    model.freeze_gates()
    return model


def test_a_subnet_pass_is_the_extracted_subnet_and_leaves_the_full_net_as_it_was():
    model = dense_net()
    model.train()
    rule = SandwichRule(model, ClassificationTask(), smallest=0.25, step=1, seed=3)
    x = torch.randn(8, 3, 12, 12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = rule.sample_masks()
    full = [m if m is not None else torch.ones(lay.out_channels, dtype=torch.bool)
            for m, lay in zip(masks, model.spec.layers)]
    assert any(int(m.sum()) < m.numel() for m in full)  # a real subnet, not the full net
    subnet = extract_subnet(model, full).train()  # train mode: BatchNorm on batch statistics, as in training
    with rule.narrowed(masks):
        narrowed = model(x)
    # the same arithmetic on fewer channels; float32 sums in another order
    torch.testing.assert_close(narrowed, subnet(x), rtol=1e-5, atol=1e-5)
    after = model.state_dict()
    for key, value in before.items():  # running statistics (momentum 0) and gates are put back
        assert torch.equal(value, after[key]), key


def test_subnets_keep_a_share_in_range_of_the_highest_norm_channels_and_replay_after_a_resume():
    model = dense_net()
    rule = SandwichRule(model, ClassificationTask(), smallest=0.5, step=2, seed=0)
    norms = l1_norms(model)
    shares = []
    for _ in range(20):
        for mask, norm, lay in zip(rule.sample_masks(), norms, model.spec.layers):
            if mask is None:
                continue
            k = int(mask.sum())
            shares.append(k / lay.out_channels)
            assert k % 2 == 0 or k == lay.out_channels
            assert 0.5 * lay.out_channels - 1 <= k <= lay.out_channels
            assert bool((norm[mask].min() >= norm[~mask].max()) if k < lay.out_channels else True)
    assert min(shares) < 0.75 < max(shares)  # the range is used, not one width
    state = rule.state_dict()
    ahead = [rule.sample_masks() for _ in range(3)]
    again = SandwichRule(model, ClassificationTask(), smallest=0.5, step=2, seed=99)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for x, y in zip(ahead, [again.sample_masks() for _ in range(3)])
               for a, b in zip(x, y) if a is not None)


def test_the_subnet_loss_reaches_the_weights_and_the_trainer_logs_it(tmp_path):
    runs = {}
    for sandwich in (False, True):
        torch.manual_seed(0)
        model = build(tiny_spec())
        model.freeze_gates()
        terms = [SandwichRule(model, ClassificationTask(), seed=0)] if sandwich else []
        cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05)
        trainer = Trainer(model, ClassificationTask(0.1), cfg, tmp_path / str(sandwich), terms=terms, progress=False)
        trainer.fit(loader())
        runs[sandwich] = (model, trainer.history[-1])
    assert "sandwich_loss" in runs[True][1] and runs[True][1]["sandwich_loss"] > 0
    assert runs[True][1]["loss"] > runs[True][1]["task_loss"]  # the subnets' term is in the loss
    changed = [not torch.equal(a, b) for a, b in zip(runs[False][0].parameters(), runs[True][0].parameters())]
    assert any(changed)
    assert all(bool((g.weight == 1).all()) for g in runs[True][0].gate_modules() if g is not None)


def test_the_train_stage_trains_with_the_sandwich_rule_and_other_stages_refuse_it(tmp_path, fake_fashion, capsys):
    run = tmp_path / "run"
    quick = ["--threads", "2", "--set", "train.batch_size=64", "--set", "train.sandwich=1",
             "--set", "train.sandwich_min=0.5"]
    assert main(["train", "--data", str(fake_fashion), "--run-dir", str(run), "--epochs", "1", *quick]) == 0
    report = json.loads((run / "train" / "report.json").read_text())
    assert report["config"]["sandwich"] == 1 and report["history"][-1]["sandwich_loss"] > 0
    # which oneDNN kernels ran, and the memory format as trained, are on record
    assert report["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert report["channels_last"] is False
    model = load_model(run / "train")
    assert all(bool((g.weight == 1).all()) for g in model.gate_modules() if g is not None)  # still dense
    code = main(["search", "--data", str(fake_fashion), "--run-dir", str(run), "--method", "uniform",
                 "--threads", "2", "--set", "finetune.sandwich=1"])
    assert code == 0  # uniform prunes in one shot: the search stage trains nothing
    code = main(["finetune", "--data", str(fake_fashion), "--run-dir", str(run), "--from", str(run / "train"),
                 "--epochs", "1", "--threads", "2", "--set", "finetune.sandwich=1"])
    assert code != 0 and "finetune.sandwich" in capsys.readouterr().err
    assert not (run / "finetune" / "weights.safetensors").exists()


def test_the_dense_stage_keeps_its_ema_net_with_the_sandwich_rule(tmp_path, fake_fashion):
    # the sandwich is a loss term but not a search: the stage keeps the EMA net, as without it
    cfg = load_config(None, [f"data.root={fake_fashion}", f"run_dir={tmp_path}", "train.epochs=1", "train.ema=true",
                             "train.batch_size=64", "threads=2"])
    data = get_data(cfg)
    model = build(shaped_spec(cfg, data))
    model.freeze_gates()
    rule = SandwichRule(model, data.task(cfg.train, model.spec))
    final, report = run_training(cfg, "train", model, cfg.train, False, data=data, terms=[rule])
    assert final is not model and report["history"][-1]["sandwich_loss"] > 0


def test_a_net_without_gates_or_a_bad_share_is_refused():
    with pytest.raises(RepasError, match="gated"):
        SandwichRule(torch.nn.Conv2d(3, 4, 3), ClassificationTask())
    with pytest.raises(RepasError, match="sandwich_min"):
        TrainConfig(sandwich=1, sandwich_min=0.0)
    with pytest.raises(RepasError, match="sandwich"):
        TrainConfig(sandwich=-1)
