"""``export.qat``: the int8 .pte and .onnx of a bundle are the net quantization-aware training
produced (no fresh calibration), and bad int8 options are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from repas.cli import main

pytest.importorskip("executorch")


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory):
    from conftest import run_to_fuse

    return run_to_fuse(tmp_path_factory.mktemp("qat"))


def test_the_int8_pte_is_the_trained_qat_net(fused_run, tmp_path):
    from repas.config import load_config
    from repas.deploy import export_models
    from repas.deploy.runner import onnx_runner, pte_runner
    from repas.stages.common import get_data
    from repas.stages.qat import qat_int8
    from repas.supernet import load_model

    run, data = fused_run
    cfg = load_config(values={"data.root": str(data), "run_dir": str(run), "finetune.batch_size": 64,
                              "export.qat_epochs": 0.5, "export.qat": True})
    dataset = get_data(cfg)
    model = load_model(run / "fuse").eval()
    int8, trained, report = qat_int8(cfg, model, dataset, model.spec)
    assert report["steps"] == 2 and report["observers_frozen_at_step"] == 1  # 256 images / 64 = 4 a epoch
    assert (report["optimizer"], report["lr"]) == ("sgd", 1e-3)  # the fine-tune's family, its default lr
    adam = load_config(values={"data.root": str(data), "run_dir": str(run), "finetune.batch_size": 64,
                               "export.qat_epochs": 0.25, "export.qat": True, "finetune.opt": "adamw"})
    assert {k: qat_int8(adam, model, dataset, model.spec)[2][k] for k in ("optimizer", "lr")} == \
        {"optimizer": "adam", "lr": 3e-4}
    changed = max(float((a - b).abs().max()) for a, b in zip(trained.state_dict().values(),
                                                              model.state_dict().values()))
    assert changed > 0  # the weights trained
    shape = (1, 1, 28, 28)
    calibration = dataset.calibration_inputs(shape, 16)
    made = export_models(model, tmp_path, shape, ["pte", "onnx"], calibration=calibration, qat=int8)
    assert made["files"]["pte"]["int8"] == "model-int8.pte" and (tmp_path / "model-int8.onnx").exists()
    assert not (tmp_path / ".qat-float.onnx").exists()
    x = calibration[0][:8]
    with torch.no_grad():
        reference = torch.cat([int8(x[i:i + 1]) for i in range(8)])
        fresh = export_models(model, tmp_path / "ptq", shape, ["pte", "onnx"], calibration=calibration)
    spread = float(reference.abs().max())
    for fmt, runner in (("pte", pte_runner), ("onnx", onnx_runner)):
        got = torch.from_numpy(np.concatenate([runner(tmp_path / f"model-int8.{fmt}")(x[i:i + 1].numpy())
                                               for i in range(8)]))
        # XNNPACK's and onnxruntime's int8 kernels round like PyTorch's reference within a few
        # output steps (here 0.0011 each)
        assert float((got - reference).abs().max()) <= 0.05 * spread, fmt
        ptq = runner(tmp_path / "ptq" / fresh["files"][fmt]["int8"])
        ptq_out = torch.from_numpy(np.concatenate([ptq(x[i:i + 1].numpy()) for i in range(8)]))
        assert float((ptq_out - reference).abs().max()) > float((got - reference).abs().max()), fmt  # not recalibrated
    assert made["checks"]["onnx_int8_max_abs_diff_vs_torch_int8"] <= 0.05 * spread


def test_repas_export_qat_writes_a_bundle_that_records_it(fused_run, tmp_path, capsys):
    run, data = fused_run
    out = tmp_path / "bundle"
    code = main(["export", str(run / "fuse"), "--data", str(data), "--format", "onnx,pte", "--qat",
                 "--set", "export.qat_epochs=0.5", "--set", "finetune.batch_size=64", "--set", "export.runs=5",
                 "--set", "export.warmup=1", "--set", "export.calibration=16"])
    err = capsys.readouterr().err
    assert code == 0, err
    manifest = json.loads((run / "export" / "model.json").read_text())
    assert manifest["checks"]["qat"]["steps"] == 2 and "pte int8" in manifest["metrics"]
    assert set(manifest["recommended_precision"]) == set(manifest["latency_ms"]) == {"onnxruntime", "executorch"}
    assert not out.exists()


def test_qat_with_onnx_alone_writes_the_qat_net_as_int8_onnx(fused_run, capsys):
    # a net with no XNNPACK kernel for some op (the U-Net's upsampling) ships ONNX alone
    import onnx

    run, data = fused_run
    code = main(["export", str(run / "fuse"), "--data", str(data), "--format", "onnx", "--qat",
                 "--set", "export.qat_epochs=0.5", "--set", "finetune.batch_size=64", "--set", "export.runs=5",
                 "--set", "export.warmup=1", "--set", "export.calibration=16"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((run / "export" / "model.json").read_text())
    assert manifest["checks"]["qat"]["steps"] == 2 and "onnx int8" in manifest["metrics"]
    assert manifest["checks"]["onnx_int8_max_abs_diff_vs_torch_int8"] < 0.05
    ops = {n.op_type for n in onnx.load(run / "export" / "model-int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops


@pytest.mark.parametrize("argv, message", [
    (["--set", "export.observer=median"], "unknown int8 observer 'median'"),
    (["--set", "export.qat_lr=0"], "qat_lr be > 0"),
    (["--set", "export.qat_epochs=.nan"], "not a finite number"),
])
def test_bad_int8_options_are_one_line(fused_run, argv, message, capsys):
    run, data = fused_run
    code = main(["export", str(run / "fuse"), "--data", str(data), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_bundle_recommends_int8_only_where_it_was_measured_faster():
    from repas.stages.export import recommended_precision

    got = recommended_precision({"onnxruntime": {"float": 0.346, "int8": 1.037}, "executorch": {"float": 0.1,
                                                                                               "int8": 0.05},
                                 "other": {"float": 0.2}})
    assert got == {"onnxruntime": "float", "executorch": "int8", "other": "float"}


def test_mixed_precision_keeps_the_named_layers_float_in_one_xnnpack_delegate(fused_run, tmp_path):
    from repas.deploy import export_models
    from repas.deploy.mixed_precision import quantizable_layers, quantize_layers
    from repas.deploy.runner import pte_runner
    from repas.supernet import load_model

    run, _ = fused_run
    model = load_model(run / "fuse").eval()
    layers = quantizable_layers(model)
    first = layers[0]
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    mixed = quantize_layers(model, x[:1], [x], keep_float=[first])
    full = quantize_layers(model, x[:1], [x])

    def weights_int8(g) -> int:  # noqa: ANN001
        return sum("dequantize_per_channel" in str(n.target) for n in g.graph.nodes)

    assert weights_int8(full) == len(layers) and weights_int8(mixed) == len(layers) - 1
    made = export_models(model, tmp_path, (1, 1, 28, 28), ["pte", "onnx"], calibration=[x], float_layers=[first])
    assert made["checks"]["pte_int8_float_layers"] == [first] and made["checks"]["pte_int8_non_delegated_ops"] == []
    import onnx

    graph = onnx.load(tmp_path / "model-int8.onnx").graph  # the int8 .onnx keeps the same layer float
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    float_convs = [n for n in convs if n.input[1] not in dequantized]
    assert [n.input[1] for n in float_convs] == [f"{first}.weight"] and len(convs) > 1
    with torch.no_grad():
        reference = mixed(x[:4]).numpy()
    run_pte = pte_runner(tmp_path / "model-int8.pte")
    got = np.concatenate([run_pte(x[i:i + 1].numpy()) for i in range(4)])
    assert np.abs(got - reference).max() <= 0.05 * np.abs(reference).max()


def test_qat_keeps_the_named_layers_float_and_the_pte_is_that_mixed_net(fused_run, tmp_path):
    from repas.config import load_config
    from repas.deploy import export_models
    from repas.deploy.mixed_precision import quantizable_layers
    from repas.deploy.runner import pte_runner
    from repas.stages.common import get_data
    from repas.stages.qat import qat_int8
    from repas.supernet import load_model

    run, data = fused_run
    model = load_model(run / "fuse").eval()
    layers = quantizable_layers(model)
    cfg = load_config(values={"data.root": str(data), "run_dir": str(run), "finetune.batch_size": 64,
                              "export.qat_epochs": 0.5, "export.qat": True, "export.float_layers": [layers[0]]})
    dataset = get_data(cfg)
    int8, _, _ = qat_int8(cfg, model, dataset, model.spec)
    weights_int8 = sum("dequantize_per_channel" in str(n.target) for n in int8.graph.nodes)
    assert weights_int8 == len(layers) - 1  # every layer's weights int8 but the first's
    shape = (1, 1, 28, 28)
    calibration = dataset.calibration_inputs(shape, 16)
    made = export_models(model, tmp_path, shape, ["pte"], calibration=calibration, qat=int8,
                         float_layers=[layers[0]])
    checks = made["checks"]
    assert checks["pte_int8_non_delegated_ops"] == [] and checks["pte_int8_float_layers"] == [layers[0]]
    assert checks["pte_int8_layer_precision"][layers[0]] == "float"
    assert {checks["pte_int8_layer_precision"][n] for n in layers[1:]} == {"int8"}
    x = calibration[0][:4]
    with torch.no_grad():
        reference = int8(x).numpy()
    got = np.concatenate([pte_runner(tmp_path / "model-int8.pte")(x[i:i + 1].numpy()) for i in range(4)])
    assert np.abs(got - reference).max() <= 0.05 * np.abs(reference).max()


def test_sensitivity_and_float_layers_through_the_cli(fused_run, capsys):
    from repas.deploy.mixed_precision import quantizable_layers
    from repas.supernet import load_model

    run, data = fused_run
    layers = quantizable_layers(load_model(run / "fuse"))
    code = main(["export", str(run / "fuse"), "--data", str(data), "--format", "onnx,pte", "--set",
                 "export.sensitivity=true", "--set", f"export.float_layers=[{layers[0]}]", "--set", "export.runs=5",
                 "--set", "export.warmup=1", "--set", "export.calibration=16"])
    err = capsys.readouterr().err
    assert code == 0, err
    checks = json.loads((run / "export" / "model.json").read_text())["checks"]
    assert list(checks["int8_sensitivity"]) == layers and checks["pte_int8_float_layers"] == [layers[0]]
    assert checks["pte_int8_layer_precision"] == {n: "float" if n == layers[0] else "int8" for n in layers}
    assert main(["info", str(run / "export")]) == 0  # the bundle shows what each layer runs in
    shown = capsys.readouterr().out
    assert f"int8 .pte precision per layer: {layers[0]} float, {layers[1]} int8" in shown
    assert f"(float: {layers[0]})" in shown and "pte int8: top1" in shown
    code = main(["export", str(run / "fuse"), "--data", str(data), "--set", "export.float_layers=[nope]"])
    err = capsys.readouterr().err
    assert code == 2 and "export.float_layers names 'nope', which the net does not have" in err
