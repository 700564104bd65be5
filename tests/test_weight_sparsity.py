"""The unstructured family (magnitude, admm-unstructured, pattern) and ResRep: the one-branch
conv + BN form and ResRep's folded compactors equal the nets they come from (eval mode,
1e-5 relative), the zeros meet the budget in the cost a zero-skipping runtime would pay,
survive fusion and the fine-tune; and each method runs through ``repas pipeline``."""

import json

import pytest
import torch

import repas
from repas.cli import main
from repas.errors import RepasError
from repas.search import create_method, extract_subnet
from repas.search.methods.unstructured import candidate_patterns
from repas.search.weight_sparsity import KeepZeros, block_convs, masks_by_cost, sparse_cost
from repas.supernet import conv_bn_form, fuse

NEW = ["magnitude", "admm-unstructured", "pattern", "resrep"]


def _supernet(seed: int = 0) -> repas.supernet.RepNet:
    """A gated supernet whose BatchNorms hold non-trivial statistics (folding must use them)."""
    from conftest import randomize_bn

    torch.manual_seed(seed)
    model = repas.create_model("repvgg-fmnist", gated=True)
    randomize_bn(model, seed)
    return model.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_masks_by_cost_drops_the_lowest_scores_until_their_cost_reaches_the_removal():
    scores = [torch.tensor([5.0, 1.0, 3.0]), torch.tensor([[2.0, 4.0]])]
    masks = masks_by_cost(scores, [1.0, torch.tensor([[10.0, 10.0]])], remove=11.5)
    # ascending: 1.0 (cost 1), 2.0 (cost 10) = 11 < 11.5, then 3.0 (cost 1) = 12 >= 11.5
    assert masks[0].tolist() == [True, False, False] and masks[1].tolist() == [[False, True]]
    assert all(m.all() for m in masks_by_cost(scores, [1.0, 1.0], remove=0.0))
    with pytest.raises(RepasError, match="raise the target"):
        masks_by_cost(scores, [1.0, 1.0], remove=100.0)


def test_the_one_branch_form_equals_the_supernet_and_keeps_its_zeros_through_fusion():
    model, x = _supernet(), torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        one = conv_bn_form(model, x).eval()
        assert _rel(one(x), ref) < 1e-5
        assert all(list(b.branches) == ["conv"] for b in one.blocks)
        one.train()  # BN measured on x: training mode starts near the same function
        assert _rel(one(x), ref) < 1e-3
        one.eval()
        conv = block_convs(one)[2]
        conv.weight[:, :, 0, 0] = 0
        fused = fuse(one)
        assert (fused.blocks[2].reparam_conv.weight[:, :, 0, 0] == 0).all()
        assert _rel(fused(x), one(x)) < 1e-5


def test_resrep_compactors_fold_into_the_convs_exactly_and_forgotten_rows_shrink_to_zero():
    model, x = _supernet(1), torch.randn(32, 1, 28, 28)
    method = create_method("resrep", model, target=0.5, updates_per_epoch=8, epochs=2)
    with torch.no_grad():
        for c in method.compactors.values():
            c.weight.add_(0.1 * torch.randn_like(c.weight))  # compactors that mix channels
        ref = model(x)  # the compacted net
        assert _rel(method.folded(x).eval()(x), ref) < 1e-5  # the acceptance: 1e-5 relative
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for update in range(1, 17):
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(update)
    forgotten = sum(int((~m).sum()) for m in method.masks)
    assert forgotten > 0 and method.metrics()["largest_forgotten_norm"] < 0.05  # the lasso emptied them
    widths = method.prune(x)
    assert float(method.budget.cost(widths)) <= method.budget.target
    assert all(list(b.branches) == ["conv"] for b in model.blocks)  # the compactors folded in, in place
    sub = extract_subnet(model)
    assert sub.spec.widths == widths


def test_resrep_under_float_and_int8_tables_records_each_layers_fastest_precision():
    from conftest import tiny_spec
    from test_latency_int8 import tables

    from repas.search import Budget, LatencyModel
    from repas.search.exact_allocation import FastestPrecision
    from repas.supernet import build

    spec = tiny_spec()
    t = tables(spec)
    latency = LatencyModel(t["float"][0], spec, int8_table=t["int8"][0])
    model = build(spec)
    target = 0.6 * float(FastestPrecision(latency)(spec.widths))
    method = create_method("resrep", model, Budget(spec, target, "latency", 1.0, latency), step=4)
    x = torch.randn(16, spec.in_channels, *spec.input_size)
    widths = method.prune(x)
    assert method.precision == method.budget.model.precision_of(widths) and len(method.precision) == len(widths)
    assert float(method.budget.cost(widths)) <= target


def test_a_method_that_keeps_every_channel_refuses_an_error_tolerance_search(tmp_path):
    from repas.config import load_config
    from repas.stages import search_stage

    cfg = load_config("configs/fmnist.yaml", overrides=["search.method=magnitude", "search.max_drop=1.0",
                                                          "search.pte_latency=null"],
                      values={"run_dir": str(tmp_path / "run")})
    with pytest.raises(RepasError, match="keeps every channel"):
        search_stage(cfg)
    with pytest.raises(RepasError, match="samples feature maps: pass inputs"):
        create_method("magnitude", _supernet(), target=0.5).prune(None)


@pytest.mark.parametrize("name", ["magnitude", "pattern"])
def test_an_unstructured_method_meets_the_budget_in_non_zero_cost_and_the_fine_tune_holds_its_zeros(name):
    model, x = _supernet(2), torch.randn(64, 1, 28, 28)
    method = create_method(name, model, target=0.4)
    widths = method.prune(x)
    assert widths == model.spec.widths  # every channel kept
    net = model  # in place: the one-branch form, its zeros in the convs
    assert sparse_cost(net, method.budget) <= method.budget.target
    if name == "magnitude":
        assert sparse_cost(net, method.budget) >= 0.99 * method.budget.target  # no more zeros than asked
    else:  # every 3x3 kernel holds one of 8 patterns of 4 entries, or nothing (connectivity pruning)
        kernels = torch.cat([c.weight.flatten(0, 1).flatten(1) != 0 for c in block_convs(net)])
        assert set(kernels.sum(1).tolist()) <= {0, 4}
        assert len({tuple(k.tolist()) for k in kernels if k.any()}) <= 8
        assert all(k[4] for k in kernels if k.any())  # the centre
    keep = KeepZeros(net)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = net(x).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    keep.after_step(1)
    assert [bool(((c.weight != 0) <= m).all()) for c, m in zip(block_convs(net), keep.masks)] == [True] * 6
    assert candidate_patterns().shape == (56, 9)


def test_an_unstructured_method_refuses_a_latency_budget():
    model = _supernet()
    with pytest.raises(RepasError, match="no latency"):
        create_method("magnitude", model, budget=repas.search.Budget(model.spec, 1.0, "latency", 1.0, lambda w: 2.0))


def test_each_method_runs_through_the_pipeline(tmp_path, capsys):
    from conftest import method_reports, tiny_method_pipeline, write_fake_fashion

    data = write_fake_fashion(tmp_path / "data")
    run = tmp_path / "run"
    code = main(tiny_method_pipeline(data, run, "magnitude", NEW[1:], threads=1))
    assert code == 0, capsys.readouterr().err
    import onnx
    from onnx import numpy_helper

    for name in NEW:
        where, searched, extracted = method_reports(run, "magnitude", name)
        assert extracted["cost_vs_target"] <= 1.0 + 1e-9, name
        weights = [numpy_helper.to_array(t) for t in onnx.load(where / "export" / "model.onnx").graph.initializer
                   if len(t.dims) == 4]
        zeros = sum(float((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
        if name == "resrep":  # channels cut, no zero weights
            assert extracted["cost_vs_target"] >= 0.97 and "weight_density" not in extracted
        else:  # every channel kept; the exported weights hold the zeros, and the report says they buy no speed
            assert extracted["widths"] == searched["supernet"]["widths"]
            assert zeros == pytest.approx(1 - extracted["weight_density"], abs=0.01) and zeros > 0.4
            assert any("accuracy only" in w for w in searched["warnings"])
    assert "of weights non-zero" in (run / "report.md").read_text()
    summary = json.loads((run / "summary.json").read_text())  # the dense net is dense, the searched one sparse
    assert summary["dense"]["weight_density"] is None and 0 < summary["searched"]["weight_density"] < 0.6
    capsys.readouterr()
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    for name in NEW:
        assert any(line.split()[:1] == [name] and len(line.split()) > 3 for line in listed.splitlines()), name
