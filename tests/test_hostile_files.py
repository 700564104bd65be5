"""Files from elsewhere are input, not instructions: every loader, through the Python API and
the CLI, refuses a hostile pruned.json, model.json, spec.json or recorded config.json in one
line with a non-zero exit, runs nothing the file names, and reads and writes nothing outside
the directory. With explicit trust a custom builder loads as before."""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from repas.cli import main
from repas.errors import RepasError

MODULE = '''
from pathlib import Path
from torch import nn

def net(width=8):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))

def evil(path):
    Path(path).write_text("side effect")  # what a hostile file would make repas run
    return net()
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """An importable module of the user's own (hostile_models) with a builder and a builder
    that writes a file."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "hostile_models.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    yield tmp_path / "mods"
    sys.modules.pop("hostile_models", None)


@pytest.fixture
def pruned(user_module, tmp_path):
    """A pruned user model saved with builder hostile_models:net, and its input."""
    import importlib

    from repas.graph import GatedModel, save_pruned

    torch.manual_seed(0)
    model = importlib.import_module("hostile_models").net().eval()
    x = torch.randn(1, 1, 12, 12)
    gated = GatedModel(model, x)
    with torch.no_grad():
        for gate in gated.gates:
            gate.weight[: gate.weight.numel() // 2] = 0.0
    gated.freeze_gates()
    sub = gated.extract().eval()
    out = tmp_path / "pruned"
    save_pruned(sub, out, gated, builder="hostile_models:net", kwargs={"width": 8})
    sys.modules.pop("hostile_models", None)  # so that a test can tell whether loading imported it
    return out, sub, x


def rewrite(path: Path, change) -> None:  # noqa: ANN001
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def one_line_cli(capsys, *argv: object) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("repas: error: ") and len(err.strip().splitlines()) == 1, err
    return err


# ---- pruned.json: the builder --------------------------------------------------------------

def test_a_pruned_json_whose_builder_writes_a_file_is_refused_before_any_import(pruned, tmp_path, capsys):
    from repas.graph import load_pruned

    out, _, _ = pruned
    marker = tmp_path / "written-by-the-builder"
    rewrite(out / "pruned.json", lambda r: r.update(builder="hostile_models:evil", kwargs={"path": str(marker)}))
    with pytest.raises(RepasError, match="builder 'hostile_models:evil' is not one repas loads by default"):
        load_pruned(out)
    err = one_line_cli(capsys, "info", out)
    assert "--trust-builder" in err and "is code that runs" in err
    assert not marker.exists() and "hostile_models" not in sys.modules  # not run, not even imported
    for name in ("os:system", "subprocess:run", "builtins:exec", "torchvision.models:get_weight",
                 "torchvision.models.detection:os", "timm:load_checkpoint", "repas.graph.files:load_pruned"):
        rewrite(out / "pruned.json", lambda r, n=name: r.update(builder=n, kwargs={}))
        with pytest.raises(RepasError, match="not one repas loads by default|has no model builder|from timm repas "
                                             "calls create_model|repas.models has no builder"):
            load_pruned(out)


def test_trusted_builders_may_not_fetch_or_read_weights_of_their_own(pruned, tmp_path):
    from repas.graph import load_pruned

    out, _, _ = pruned
    for builder, kwargs in (("torchvision.models:resnet18", {"weights": "DEFAULT"}),
                            ("timm:create_model", {"model_name": "resnet18", "pretrained": True}),
                            ("timm:create_model", {"model_name": "resnet18", "checkpoint_path": "/etc/passwd"})):
        rewrite(out / "pruned.json", lambda r, b=builder, k=kwargs: r.update(builder=b, kwargs=k))
        with pytest.raises(RepasError, match="may not fetch or read weights of its own"):
            load_pruned(out)
    rewrite(out / "pruned.json", lambda r: r.update(builder="timm:create_model", kwargs={"model_name": "hf-hub:x/y"}))
    with pytest.raises(RepasError, match="registered model_name"):
        load_pruned(out)


def test_with_explicit_trust_a_custom_builder_loads_as_before(pruned, capsys):
    from repas.graph import load_pruned

    out, sub, x = pruned
    for loaded in (load_pruned(out, trust_builder=True), load_pruned(out, trusted_builders=["hostile_models:net"])):
        with torch.no_grad():
            assert torch.equal(loaded(x), sub(x))
    assert main(["info", str(out), "--trust-builder"]) == 0
    printed = capsys.readouterr().out
    assert "hostile_models:net(width=8)" in printed and "4/8" in printed
    with pytest.raises(RepasError, match="not one repas loads by default"):
        load_pruned(out, trusted_builders=["hostile_models:evil"])  # trust is by exact name


# ---- pruned.json: malformed fields ---------------------------------------------------------

PRUNED_CASES = {
    "not json": (None, "is not valid JSON"),
    "nan": ("NaN", "NaN is not a number repas accepts"),
    "a list": ([], "must be a JSON object"),
    "format": (lambda r: r.update(format="other/9"), "this repas reads repas-pruned-model/1"),
    "builder type": (lambda r: r.update(builder=42), "builder must be a string"),
    "builder shape": (lambda r: r.update(builder="no colon"), "must look like 'package.module:function'"),
    "kwargs type": (lambda r: r.update(kwargs=[1]), "kwargs must be an object"),
    "huge input": (lambda r: r.update(input_shape=[1, 1, 30000, 30000]), "more than repas accepts"),
    "input rank": (lambda r: r.update(input_shape=[1, 12, 12]), "input_shape must be a list of 4"),
    "input float": (lambda r: r.update(input_shape=[1, 1, 12.5, 12]), r"input_shape\[2\] must be a whole number"),
    "ignored name": (lambda r: r.update(ignored=["no.such.layer"]), "ignored names"),
    "ignored type": (lambda r: r.update(ignored=[3]), r"ignored\[0\] must be a string"),
    "groups missing": (lambda r: r.pop("groups"), "groups is missing"),
    "keep range": (lambda r: r["groups"][0].update(keep=[0, 99]), r"groups\[0\].keep\[1\] must lie in \[0, 7\]"),
    "keep negative": (lambda r: r["groups"][0].update(keep=[-1]), r"keep\[0\] must lie in \[0, 7\]"),
    "keep repeated": (lambda r: r["groups"][0].update(keep=[1, 1]), "each kept channel once"),
    "size": (lambda r: r["groups"][0].update(size=10 ** 9), r"groups\[0\].size must lie in"),
}


@pytest.mark.parametrize("case", list(PRUNED_CASES))
def test_each_malformed_field_of_pruned_json_is_one_line(pruned, case, capsys):
    from repas.graph import load_pruned

    out, _, _ = pruned
    change, message = PRUNED_CASES[case]
    path = out / "pruned.json"
    if change is None:
        path.write_text(path.read_text()[:-20])
    elif isinstance(change, str):
        path.write_text(path.read_text().replace('"width": 8', f'"width": {change}'))
    elif isinstance(change, list):
        path.write_text(json.dumps(change))
    else:
        rewrite(path, change)
    with pytest.raises(RepasError, match=message):
        load_pruned(out, trust_builder=True)
    assert message.replace("\\", "").split("[")[0] in one_line_cli(capsys, "info", out, "--trust-builder")


# ---- model.json: a bundle names only its own files, each with a hash ------------------------

@pytest.fixture
def bundle(tmp_path):
    """A small real classification bundle: one float ONNX file and model.json with its hash."""
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from repas.deploy.bundle import export_models, write_manifest

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    out = tmp_path / "bundle"
    out.mkdir()
    made = export_models(net, out, (1, 1, 8, 8), ["onnx"])
    write_manifest(out, {"task": "classification", "input": {"shape": [1, 1, 8, 8], "mean": [0.5], "std": [0.25],
                                                             "colour": "grayscale"},
                         "labels": ["a", "b", "c"], **made})
    Image.fromarray((torch.rand(8, 8) * 255).byte().numpy()).save(tmp_path / "img.png")
    return out, tmp_path / "img.png"


def test_the_small_bundle_runs_as_it_is(bundle, capsys):
    out, image = bundle
    assert main(["predict", str(out), str(image)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


BUNDLE_CASES = {
    "parent path": (lambda m: m["files"]["onnx"].update(float="../outside.onnx"), "not the plain name of a file"),
    "absolute path": (lambda m: m["files"]["onnx"].update(float="/tmp/outside.onnx"), "not the plain name of a file"),
    "hash dropped": (lambda m: m["sha256"].pop("model.onnx"), "records no SHA-256 for model.onnx"),
    "no hashes": (lambda m: m.pop("sha256"), "records no SHA-256 for model.onnx"),
    "bad hash": (lambda m: m["sha256"].update({"model.onnx": "xyz"}), "must be 64 lowercase hex digits"),
    "hash of a path": (lambda m: m["sha256"].update({"../x": "0" * 64}), "not the plain name of a file"),
    "huge input": (lambda m: m["input"].update(shape=[1, 1, 20000, 20000]), "more than repas accepts"),
    "input batch": (lambda m: m["input"].update(shape=[8, 1, 8, 8]), "one image of 1 to 4 channels"),
    "input type": (lambda m: m["input"].update(shape="1x1x8x8"), "input.shape must be a list of 4"),
    "task": (lambda m: m.update(task="rm -rf"), "task is 'rm -rf'; expected one of"),
    "input missing": (lambda m: m.pop("input"), "input is missing"),
    "files type": (lambda m: m.update(files=["model.onnx"]), "files must be a JSON object"),
    "std zero": (lambda m: m["input"].update(std=[0]), r"input.std\[0\] must be a finite number"),
    "mean length": (lambda m: m["input"].update(mean=[0.1, 0.2]), "has 2 values for 1 channels"),
    "labels": (lambda m: m.update(labels=[1, 2, 3]), "labels must be a list of strings"),
    "sr scale": (lambda m: m.update(task="super-resolution", scale=1000), "scale must lie in"),
    "nan": (None, "NaN is not a number repas accepts"),
    "not json": ("{", "is not valid JSON"),
}


@pytest.mark.parametrize("case", list(BUNDLE_CASES))
def test_each_hostile_model_json_is_refused_in_one_line(bundle, tmp_path, case, capsys):
    from repas.deploy.runner import load_runner, predict

    out, image = bundle
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((out / "model.onnx").read_bytes())  # a model a hostile bundle would run
    change, message = BUNDLE_CASES[case]
    path = out / "model.json"
    if change is None:
        path.write_text(path.read_text().replace('"mean": [\n   0.5', '"mean": [\n   NaN'))
        assert "NaN" in path.read_text()
    elif isinstance(change, str):
        path.write_text(change)
    else:
        rewrite(path, change)
    for call in (lambda: predict(out, image), lambda: load_runner(out)):
        with pytest.raises(RepasError, match=message):
            call()
    assert message.replace("\\", "").split("[")[0] in one_line_cli(capsys, "predict", out, image)


def test_a_model_file_that_links_out_of_the_bundle_is_refused(bundle, tmp_path, capsys):
    out, image = bundle
    outside = tmp_path / "outside.onnx"
    (out / "model.onnx").rename(outside)
    (out / "model.onnx").symlink_to(outside)  # the hash still matches: only the link gives it away
    assert "not a regular file inside the bundle" in one_line_cli(capsys, "predict", out, image)


# ---- spec.json: sizes and types --------------------------------------------------------------

SPEC_CASES = {
    "width": (lambda d: d["layers"][0].update(out_channels=10 ** 9), "out_channels must lie in"),
    "kernel": (lambda d: d["layers"][0].update(kernel=4097), "kernel must lie in"),
    "input": (lambda d: d.update(input_size=[100000, 100000]), "input_size must lie in"),
    "width type": (lambda d: d["layers"][0].update(out_channels="16"), "out_channels must be a whole number"),
    "width float": (lambda d: d["layers"][0].update(out_channels=16.5), "out_channels must be a whole number"),
    "layers type": (lambda d: d.update(layers=7), "malformed spec"),
    "layer type": (lambda d: d.update(layers=[[1, 2]]), "malformed spec"),
    "version": (lambda d: d.update(version="1"), "version must be a whole number"),
    "a list": (None, "a spec is a JSON object"),
    "classes": (lambda d: d.update(num_classes=-3), "num_classes must lie in"),
}


@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_each_hostile_spec_json_is_one_line(tmp_path, case, capsys):
    from repas.spec import ArchSpec
    from repas.supernet import create_supernet_spec, load_model

    model = tmp_path / "model"
    model.mkdir()
    d = create_supernet_spec("repvgg-fmnist").to_dict()
    change, message = SPEC_CASES[case]
    if change is None:
        d = [d]
    else:
        change(d)
    (model / "spec.json").write_text(json.dumps(d))
    (model / "weights.safetensors").write_bytes(b"")
    for call in (lambda: ArchSpec.load(model), lambda: load_model(model)):
        with pytest.raises(RepasError, match=message):
            call()
    assert message in one_line_cli(capsys, "info", model)


# ---- a copied run's recorded config ----------------------------------------------------------

def copied_run(tmp_path: Path, **sections: dict) -> Path:
    run = tmp_path / "copied-run"
    (run / "fuse").mkdir(parents=True)
    config = {"run_dir": "/somewhere/else", **sections}
    (run / "fuse" / "config.json").write_text(json.dumps(config))
    return run


@pytest.mark.parametrize("key, value", [("data.cache_dir", "{elsewhere}/cache"), ("data.root", "/etc"),
                                        ("model.weights", "{elsewhere}/w.safetensors"),
                                        ("search.latency_table", "../../latency.csv"),
                                        ("search.int8_latency_table", "/tmp/int8.csv")])
def test_a_copied_runs_recorded_paths_cannot_point_outside_it(tmp_path, key, value, capsys):
    elsewhere = tmp_path / "elsewhere"
    section, name = key.split(".")
    value = value.format(elsewhere=elsewhere)
    run = copied_run(tmp_path, data={"name": "sr-photos"}, **{section: {name: value}} if section != "data" else {})
    if section == "data":
        rewrite(run / "fuse" / "config.json", lambda c: c["data"].update({name: value}))
    err = one_line_cli(capsys, "export", "--run-dir", run)
    assert f"sets {key} to {value}, outside the run directory" in err
    assert ("--data /etc" if key == "data.root" else f"--set {key}=") in err
    assert not elsewhere.exists() and sorted(p.name for p in run.rglob("*")) == ["config.json", "fuse"]


def test_a_path_given_on_the_command_line_or_inside_the_run_is_accepted(tmp_path):
    from repas.cli.config_args import load_args_config
    from repas.cli.parser import build_parser

    run = copied_run(tmp_path, data={"name": "sr-photos", "cache_dir": "/elsewhere/cache"},
                     search={"latency_table": str(tmp_path / "copied-run" / "latency.csv")})
    args = build_parser().parse_args(["export", "--run-dir", str(run), "--set", "data.cache_dir=/my/cache"])
    cfg = load_args_config(args)
    assert cfg.data.cache_dir == "/my/cache" and cfg.search.latency_table.endswith("copied-run/latency.csv")
    assert cfg.run_dir == str(run)


def test_a_recorded_config_cannot_grant_trust(tmp_path, user_module, capsys):
    from repas.cli.config_args import load_args_config
    from repas.cli.parser import build_parser

    marker = tmp_path / "written"
    run = copied_run(tmp_path, model={"builder": "hostile_models:evil", "kwargs": {"path": str(marker)},
                                      "trust_builder": True, "trusted_builders": ["hostile_models:evil"]})
    cfg = load_args_config(build_parser().parse_args(["export", "--run-dir", str(run)]))
    assert cfg.model.trust_builder is False and not cfg.model.trusted_builders
    one_line_cli(capsys, "export", "--run-dir", run)
    assert not marker.exists() and "hostile_models" not in sys.modules
    malformed = copied_run(tmp_path / "m")
    (malformed / "fuse" / "config.json").write_text('{"data": {"root": NaN}}')
    assert "NaN is not a number repas accepts" in one_line_cli(capsys, "export", "--run-dir", malformed)


# ---- NaN budgets -------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [["--target", "nan"], ["--target-macs", "nan"], ["--target-macs", "infM"],
                                   ["--target-latency", "nan"], ["--set", "search.target=.nan"],
                                   ["--set", "search.alpha=.inf"]])
def test_nan_budgets_are_refused(tmp_path, flags, capsys):
    err = one_line_cli(capsys, "search", "--run-dir", tmp_path / "run", *flags)
    assert any(w in err for w in ("finite", "not a valid", "cannot read")), err
    assert not (tmp_path / "run").exists()


def test_nan_budgets_are_refused_in_python():
    from repas.search import Budget, create_method, resolve_target
    from repas.supernet import create_model

    model = create_model("repvgg-fmnist")
    for target in (math.nan, math.inf, "nanM"):
        with pytest.raises(RepasError, match="finite|fraction of the dense cost"):
            create_method("uniform", model, target=target)
    with pytest.raises(RepasError, match="finite"):
        Budget(model.spec, math.nan)
    with pytest.raises(RepasError, match="finite"):
        resolve_target(model.spec, "macs", absolute="nan")


def test_an_output_directory_that_cannot_be_written_is_one_line(fake_fashion, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    err = one_line_cli(capsys, "train", "--data", fake_fashion, "--run-dir", blocker / "run", "--epochs", "1",
                       "--set", "data.train_subset=64", "--set", "train.batch_size=32")
    assert "cannot use" in err and "a-file" in err and blocker.read_text() == "not a directory"
