"""``repas pipeline`` on a user's own CNN (``model.builder``): a torchvision ResNet-18 trained,
searched by eagleeye beside uniform scaling, fine-tuned, saved without pickles, fused,
exported and run by ``repas predict``."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from repas.cli import main

RESNET = ["--set", "model.builder=repas.models:resnet18_small", "--set", "model.kwargs={stem_stride: 4}"]
QUICK = ["--threads", "2", "--epochs", "1", "--set", "export.runs=10", "--set", "export.warmup=2",
         "--set", "export.int8=false",
         "--set", "train.batch_size=64", "--set", "finetune.batch_size=64", "--set", "search.batch_size=64"]


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    from conftest import write_fake_fashion

    from repas.search.methods.adaptive_bn import AdaptiveBN

    tmp = tmp_path_factory.mktemp("user")
    data = write_fake_fashion(tmp / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AdaptiveBN, "candidates", 6)  # the same code as 40, in a sixth of the time
        mp.setattr(AdaptiveBN, "mutations", 2)
        code = main(["pipeline", "--data", str(data), "--run-dir", str(tmp / "run"), *QUICK, *RESNET,
                     "--set", "search.method=eagleeye", "--set", "search.compare=[uniform]",
                     "--set", "search.alpha=2.5"])
    assert code == 0
    return tmp / "run", data


def test_every_method_meets_the_budget_and_its_bundle_equals_its_saved_model(user_run):
    from repas.deploy.runner import load_runner
    from repas.graph import load_pruned

    run, _ = user_run
    report = json.loads((run / "report.json").read_text())
    assert list(report["methods"]) == ["eagleeye", "uniform"]
    for name, r in report["methods"].items():
        assert 0.97 <= r["cost_vs_target"] <= 1.0, name
        assert r["target"] == pytest.approx(0.5 * r["dense_macs"])
        assert r["alpha"] == 2.5  # the config's search.alpha reaches a user model's method (it once did not)
        out = run if name == "eagleeye" else run / f"compare-{name}"
        model = load_pruned(out / "pruned").eval()  # rebuilt by torchvision and cut, nothing unpickled
        assert type(model).__name__ == "ResNet"
        # the widths the report gives are the saved model's (its MACs, measured)
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, 1, 28, 28))
        assert counter.get_total_flops() / 2 == pytest.approx(r["macs"], rel=1e-9)
        x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = model(x).numpy()
        for fmt in ("onnx", "pte"):  # fused (BN folded), in onnxruntime and in ExecuTorch (XNNPACK)
            got = load_runner(out / "export", fmt)(x.numpy())
            assert np.abs(got - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max())), fmt
    assert "| eagleeye |" in (run / "report.md").read_text() and "| uniform |" in (run / "report.md").read_text()


def test_repas_predict_runs_a_user_models_bundle(user_run, tmp_path, capsys):
    run, _ = user_run
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)).save(image)
    assert main(["predict", str(run / "export"), str(image)]) == 0
    printed = [line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines()]
    # what it prints is the model's own answer: the saved (unfused, PyTorch) model on the input
    # the bundle's preprocessing makes, its softmax ranked here, the labels model.json names
    from repas.deploy.runner import classifier_input, open_image, read_manifest
    from repas.graph import load_pruned

    manifest = read_manifest(run / "export")
    x = torch.from_numpy(classifier_input(open_image(image), manifest["input"]))
    with torch.no_grad():
        probs = torch.softmax(load_pruned(run / "pruned").eval()(x).double(), dim=1)[0]
    labels = manifest["labels"]
    assert labels == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"]  # Fashion-MNIST's classes, in its order
    assert probs.numel() == 10 and len(printed) == 5
    top = torch.argsort(probs, descending=True)[:5].tolist()
    assert [label for _, label in printed] == [labels[i] for i in top], (printed, probs.tolist())
    for percent, label in printed:  # to the two decimals it prints (and ONNX's rounding)
        assert float(percent.rstrip("%")) / 100 == pytest.approx(float(probs[labels.index(label)]), abs=2e-4), label


def test_a_user_model_with_a_budget_it_cannot_have_is_a_clear_error(user_run, capsys):
    run, data = user_run
    code = main(["pipeline", "--data", str(data), "--run-dir", str(run.parent / "bad"), *QUICK, *RESNET,
                 "--set", "search.metric=latency"])
    assert code == 2 and "search.metric=latency needs this model's latency table" in capsys.readouterr().err
    code = main(["pipeline", "--data", str(data), "--run-dir", str(run.parent / "bad"), *QUICK, *RESNET,
                 "--set", "search.int8_latency_table=x.csv"])
    assert code == 2 and "search.int8_latency_table are for repas's own search spaces" in capsys.readouterr().err
    code = main(["pipeline", "--data", str(data), "--run-dir", str(run.parent / "bad"), *QUICK,
                 "--set", "model.builder=nowhere:net"])
    assert code == 2 and "builder 'nowhere:net' is not one repas loads by default" in capsys.readouterr().err
    code = main(["pipeline", "--data", str(data), "--run-dir", str(run.parent / "bad"), *QUICK,
                 "--set", "model.builder=nowhere:net", "--trust-builder"])
    assert code == 2 and "cannot import the builder 'nowhere:net'" in capsys.readouterr().err
    code = main(["pipeline", "--data", str(data), "--run-dir", str(run.parent / "bad"), *QUICK, *RESNET,
                 "--set", "model.kwargs=[1, 2]"])
    assert code == 2 and "model.kwargs: [1, 2] is not a valid dict" in capsys.readouterr().err
    code = main(["pipeline", "--data", str(data), "--run-dir", str(run.parent / "bad"), *QUICK, *RESNET,
                 "--set", f"model.weights={run.parent / 'none.safetensors'}"])
    assert code == 2 and "no weights at" in capsys.readouterr().err
    code = main(["pipeline", "--data", str(data), "--run-dir", str(run.parent / "bad"), *QUICK, *RESNET,
                 "--set", "train.sandwich=1"])
    assert code == 2 and "a user model (model.builder) trains ungated" in capsys.readouterr().err
    # weights of another model (the pruned ResNet's): each misfit named, nothing half-loaded
    code = main(["pipeline", "--data", str(data), "--run-dir", str(run.parent / "bad"), *QUICK, *RESNET,
                 "--set", f"model.weights={run / 'pruned' / 'weights.safetensors'}"])
    err = capsys.readouterr().err
    assert code == 2 and "(model.weights) do not match ResNet: wrong shapes" in err


def test_a_user_models_run_passes_through_info_export_and_predict(user_run, tmp_path, capsys):
    """`repas info RUN`, `repas info RUN/pruned`, `repas export RUN` (no --config: the run's
    recorded config) and `repas predict` on the bundle it writes, for a user model's run."""
    import shutil

    from repas.deploy.runner import load_runner
    from repas.graph import load_pruned

    run, data = user_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export", "compare-*"))
    for target in (copy, copy / "pruned"):
        assert main(["info", str(target)]) == 0
        out = capsys.readouterr().out
        assert "resnet18_small" in out and "total:" in out and "MACs" in out
    code = main(["export", str(copy), "--data", str(data), "--format", "onnx", "--no-int8",
                 "--set", "export.runs=5", "--set", "export.warmup=1"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    manifest = json.loads((copy / "export" / "model.json").read_text())
    assert manifest["task"] == "classification" and manifest["input"]["shape"] == [1, 1, 28, 28]
    model = load_pruned(copy / "pruned")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        expected = model(x).numpy()
    got = np.concatenate([load_runner(copy / "export")(x[i:i + 1].numpy()) for i in range(2)])
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (28, 28), dtype=np.uint8)).save(image)
    assert main(["predict", str(copy / "export"), str(image)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 5


def test_a_result_at_chance_or_with_a_sliver_of_a_group_warns():
    from repas.stages.user_model import result_warnings

    got = result_warnings("pas", {"top1": 10.0}, [64, 256, 32], [4, 200, 2], 10)
    assert len(got) == 2 and "near chance" in got[0] and "group 0 at 4 of 64" in got[1] and "32" not in got[1]
    assert result_warnings("uniform", {"top1": 85.0}, [64, 256], [32, 128], 10) == []
    assert result_warnings("x", {"psnr": 30.0}, [64], [40], 0) == []


def test_repas_finetune_trains_a_user_models_pruned_model_in_place(user_run, tmp_path, capsys):
    """`repas finetune --run-dir RUN` (no --config) on a user model's run trains RUN/pruned
    further, by its builder, and writes it back whole: new weights, the same pruned.json, a
    report with the test score; the model it holds is then what `repas export` bundles."""
    import shutil

    from repas.graph import load_pruned
    from repas.supernet.model_files import read_weights

    run, data = user_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export", "compare-*"))
    before = read_weights(copy / "pruned" / "weights.safetensors")
    record = (copy / "pruned" / "pruned.json").read_bytes()
    code = main(["finetune", "--run-dir", str(copy), "--data", str(data), "--epochs", "1", "--threads", "2",
                 "--set", "finetune.batch_size=64", "--set", "finetune.lr=0.05"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    after = read_weights(copy / "pruned" / "weights.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    assert (copy / "pruned" / "pruned.json").read_bytes() == record
    report = json.loads((copy / "pruned" / "report.json").read_text())
    assert report["stage"] == "finetune" and 0 <= report["test"]["top1"] <= 100
    assert "finetune (repas.models:resnet18_small)" in printed.out  # progress names the stage and the model
    model = load_pruned(copy / "pruned")  # it loads by its builder, with the new weights
    assert torch.equal(model.state_dict()[next(iter(after))], after[next(iter(after))])


def test_a_bundle_written_from_python_is_read_by_repas_predict(user_run, tmp_path, capsys):
    """`repas.export_bundle` writes model.json as `repas export` does; `repas predict` runs it
    and prints the given labels, and the ONNX file equals the fused model."""
    import repas
    from repas.deploy.runner import load_runner
    from repas.graph import load_pruned

    run, _ = user_run
    model = repas.graph.fuse_user_model(load_pruned(run / "pruned"))
    labels = [f"class-{i}" for i in range(10)]
    out = repas.export_bundle(model, tmp_path / "bundle", (1, 1, 28, 28), labels=labels, mean=[0.5], std=[0.25])
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(load_runner(out)(x.numpy()) - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (28, 28), dtype=np.uint8)).save(image)
    assert main(["predict", str(out), str(image)]) == 0
    shown = capsys.readouterr().out.strip().splitlines()
    assert len(shown) == 5 and all(line.split()[-1] in labels or any(lab in line for lab in labels)
                                   for line in shown)
    with pytest.raises(repas.RepasError, match="3 labels for a model with 10 outputs"):
        repas.export_bundle(model, tmp_path / "bad", (1, 1, 28, 28), labels=["a", "b", "c"])
    assert not (tmp_path / "bad").exists()


def test_a_latency_budget_on_a_user_model_reads_a_table_of_its_own_conv_shapes(user_run, tmp_path, capsys):
    from repas.graph import GatedModel
    from repas.latency_table import LatencyTable
    from repas.models import resnet18_small
    from repas.search.graph_latency import GraphLatencyModel

    run, data = user_run
    table = tmp_path / "latency.csv"
    code = main(["profile", "--data", str(data), "--config", "configs/resnet18_fmnist.yaml", "--output", str(table),
                 "--set", "profile.points=2", "--set", "profile.runs=4", "--set", "profile.passes=1",
                 "--set", "profile.warmup=1", "--set", "export.threads=1"])
    assert code == 0, capsys.readouterr().err
    rows = LatencyTable.load(table)
    assert rows.meta["model"] == "repas.models:resnet18_small"
    gated = GatedModel(resnet18_small(stem_stride=4), torch.zeros(1, 1, 28, 28))
    latency = GraphLatencyModel(rows, gated.costs, gated.spec.widths)
    # calibrated on the dense net and on every group cut to a half and a quarter: the
    # least-squares line through their measured times, so the residuals sum to zero
    measured = [float(v) for v in rows.meta["whole_nets_ms"].split()]
    nets = [[max(1, min(s, round(s * f / 4) * 4)) for s in gated.spec.widths] for f in (1, 0.5, 0.25)]
    assert float(rows.meta["row_scale"]) >= 0.5
    fitted = [latency.overhead + latency.row_scale * float(latency.rows(w)[0]) for w in nets]
    assert sum(fitted) == pytest.approx(sum(measured), rel=1e-4)
    code = main(["pipeline", "--data", str(data), "--run-dir", str(tmp_path / "run"), *QUICK, *RESNET,
                 "--set", f"model.weights={run / 'train' / 'weights.safetensors'}", "--set", "search.method=uniform",
                 "--set", "search.metric=latency", "--set", f"search.latency_table={table}",
                 "--set", "search.target=0.8", "--set", "export.formats=[onnx]",
                 "--set", "finetune.lr=0.001"])  # the default lr can blow up a short fine-tune on fake data
    assert code == 0, capsys.readouterr().err
    r = json.loads((tmp_path / "run" / "report.json").read_text())["methods"]["uniform"]
    assert r["target"] == pytest.approx(0.8 * latency(gated.spec.widths), rel=1e-6)
    assert r["latency"] == pytest.approx(latency(r["widths"]), rel=1e-9)
    assert 0.9 <= r["cost_vs_target"] <= 1.0
