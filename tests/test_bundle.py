"""The deployment bundle of a run (`repas export`), and `repas predict` on it in an
environment where torch, yaml and the rest of the training stack cannot be imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repas.cli import main

pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
# A bare environment: only the standard library, numpy, pillow and onnxruntime (and repas itself).
BLOCKED = ("torch", "torchvision", "timm", "yaml", "scipy", "safetensors", "tensorboard", "tqdm", "executorch",
           "torchao", "onnx", "skimage", "sklearn")
BARE = f"""
import sys
class Bare:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {BLOCKED!r}:
            raise ImportError('not in this environment: ' + name)
sys.meta_path.insert(0, Bare())
from repas.cli import main
code = main(sys.argv[1:])
assert not any(m.split('.')[0] in {BLOCKED!r} for m in sys.modules), 'a blocked module was imported'
sys.exit(code)
"""


def bare_predict(*argv: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", BARE, "predict", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny run up to the fused net, then `repas export RUN_DIR` with every format and int8."""
    from conftest import run_to_fuse

    run, data = run_to_fuse(tmp_path_factory.mktemp("bundle"))
    formats = "onnx,pte" if _has_executorch() else "onnx"
    assert main(["export", str(run), "--data", str(data), "--format", formats, "--set", "export.runs=10",
                 "--set", "export.warmup=1", "--set", "export.calibration=32"]) == 0
    return run / "export", data


def _has_executorch() -> bool:
    import importlib.util

    return importlib.util.find_spec("executorch") is not None


def test_manifest_says_how_to_feed_the_model_and_what_it_costs(bundle):
    out, _ = bundle
    m = json.loads((out / "model.json").read_text())
    assert m["bundle_format"] == 1 and m["repas_version"] and m["task"] == "classification"
    assert m["input"]["shape"] == [1, 1, 28, 28] and m["input"]["colour"] == "grayscale"
    assert m["input"]["mean"] == [pytest.approx(0.2860)] and len(m["labels"]) == 10
    spec = json.loads((out / "spec.json").read_text())
    assert m["widths"] == [lay["out_channels"] for lay in spec["layers"]] and m["macs"] > 0 and m["params"] > 0
    formats = ["onnx", "pte"] if _has_executorch() else ["onnx"]
    assert sorted(m["files"]) == formats
    for fmt in formats:
        runtime = {"onnx": "onnxruntime", "pte": "executorch"}[fmt]
        assert set(m["files"][fmt]) == {"float", "int8"}
        assert all((out / name).exists() for name in m["files"][fmt].values())
        assert set(m["latency_ms"][runtime]) == {"float", "int8"}
        assert all(v > 0 for v in m["latency_ms"][runtime].values())
        assert set(m["metrics"]) >= {f"{fmt} float", f"{fmt} int8"}
    # the float models score what PyTorch scores: the same predictions on the same test images
    finetune = json.loads((out.parent / "finetune" / "report.json").read_text())
    assert m["metrics"]["onnx float"]["top1"] == pytest.approx(finetune["test"]["top1"], abs=1.0)
    assert m["checks"]["onnx_float_max_abs_diff"] <= 1e-4


def test_export_without_int8_removes_the_earlier_int8_files(bundle, tmp_path):
    out, data = bundle
    copy = tmp_path / "run"
    (copy / "fuse").mkdir(parents=True)
    for f in ("spec.json", "weights.safetensors"):
        (copy / "fuse" / f).write_bytes((out.parent / "fuse" / f).read_bytes())
    (copy / "export").mkdir()
    (copy / "export" / "model-int8.onnx").write_bytes(b"stale")
    assert main(["export", str(copy), "--data", str(data), "--format", "onnx", "--no-int8", "--set",
                 "export.runs=5"]) == 0
    m = json.loads((copy / "export" / "model.json").read_text())
    assert m["files"] == {"onnx": {"float": "model.onnx"}}
    assert not (copy / "export" / "model-int8.onnx").exists()


def _fashion_image(data: Path, index: int, path: Path) -> tuple[np.ndarray, int]:
    from repas.data import load_dataset

    test = load_dataset("fashion-mnist", data, install=False).test
    Image.fromarray(test.images[index, 0].numpy()).save(path)
    return test.images[index:index + 1], int(test.labels[index])


def test_predict_runs_without_torch_and_agrees_with_pytorch(bundle, tmp_path):
    out, data = bundle
    image, _ = _fashion_image(data, 3, tmp_path / "img.png")
    from repas.supernet import load_model

    model = load_model(out.parent / "fuse").eval()
    with torch.no_grad():
        logits = model((image.float() / 255 - 0.2860) / 0.3530)[0]
    labels = json.loads((out / "model.json").read_text())["labels"]
    expected = [labels[i] for i in torch.argsort(logits, descending=True)[:5]]
    done = bare_predict(out, tmp_path / "img.png")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line.split("%", 1)[1].strip() for line in lines] == expected
    probs = [float(line.split("%")[0]) for line in lines]
    assert probs == sorted(probs, reverse=True) and probs[0] == pytest.approx(
        100 * torch.softmax(logits, 0).max().item(), abs=0.01)
    int8 = bare_predict(out, tmp_path / "img.png", "--precision", "int8", "-k", "3")
    assert int8.returncode == 0 and len(int8.stdout.strip().splitlines()) == 3


def test_predict_pte_runs_on_executorch(bundle, tmp_path, capsys):
    pytest.importorskip("executorch")
    out, data = bundle
    _fashion_image(data, 5, tmp_path / "img.png")
    assert main(["predict", str(out), str(tmp_path / "img.png"), "--format", "onnx"]) == 0
    onnx_lines = capsys.readouterr().out
    assert main(["predict", str(out), str(tmp_path / "img.png"), "--format", "pte"]) == 0
    assert capsys.readouterr().out == onnx_lines  # same labels, same probabilities to 0.01%


@pytest.mark.parametrize("argv,message", [
    (["{tmp}", "{img}"], "is not a repas bundle"),
    (["{out}", "{tmp}/missing.png"], "no image at"),
    (["{out}", "{notimg}"], "cannot read"),
    (["{out}", "{img}", "--format", "pte"], "needs ExecuTorch"),  # the bare environment has no ExecuTorch
    (["{broken}", "{img}"], "is listed in model.json but missing"),
])
def test_predict_bad_input_is_one_line_error(bundle, tmp_path, argv, message):
    out, data = bundle
    _fashion_image(data, 0, tmp_path / "img.png")
    (tmp_path / "not.png").write_text("not an image")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((out / "model.json").read_text())
    args = [a.format(tmp=tmp_path, img=tmp_path / "img.png", out=out, notimg=tmp_path / "not.png", broken=broken)
            for a in argv]
    done = bare_predict(*args)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1


# ---- bundles that check themselves ----------------------------------------------------------

def _copy_bundle(out: Path, to: Path) -> Path:
    import shutil

    return Path(shutil.copytree(out, to))


def _record_hash(bundle: Path, name: str) -> None:
    """Make model.json's hash of ``name`` match the file again (as if the file had been
    made that way): what is left to catch it is the runtime's own check."""
    import hashlib

    manifest = json.loads((bundle / "model.json").read_text())
    manifest.setdefault("sha256", {})[name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    (bundle / "model.json").write_text(json.dumps(manifest))


def test_manifest_records_the_sha256_of_every_model_file(bundle):
    import hashlib

    out, _ = bundle
    m = json.loads((out / "model.json").read_text())
    names = {name for per_format in m["files"].values() for name in per_format.values()}
    assert set(m["sha256"]) == names
    for name in names:
        assert m["sha256"][name] == hashlib.sha256((out / name).read_bytes()).hexdigest()


@pytest.mark.parametrize("fmt", ["onnx", "pte"])
def test_a_model_file_the_runtime_cannot_load_is_one_line_error(bundle, tmp_path, fmt):
    """Garbage under a matching hash gets past the hash check: the runtime's failure to load
    it is then one RepasError line, in Python and from `repas predict` alike."""
    from repas.deploy.runner import predict
    from repas.errors import RepasError

    if fmt == "pte":
        pytest.importorskip("executorch")
    out, data = bundle
    _fashion_image(data, 1, tmp_path / "img.png")
    copy = _copy_bundle(out, tmp_path / "bundle")
    (copy / f"model.{fmt}").write_bytes(b"not a model at all " * 64)
    _record_hash(copy, f"model.{fmt}")
    with pytest.raises(RepasError) as caught:
        predict(copy, tmp_path / "img.png", fmt=fmt)
    message = str(caught.value)
    assert f"model.{fmt}" in message and "cannot load" in message and "\n" not in message
    done = subprocess.run([sys.executable, "-m", "repas", "predict", str(copy), str(tmp_path / "img.png"),
                           "--format", fmt], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("repas: error: ") and "cannot load" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_replaced_model_file_fails_its_hash_check(bundle, tmp_path):
    """A valid model that is not the one exported (here the int8 file copied over the float
    one) runs, so only the hash can tell; without a hash there is no load at all."""
    from repas.deploy.runner import load_runner, predict
    from repas.errors import RepasError

    out, data = bundle
    _fashion_image(data, 2, tmp_path / "img.png")
    copy = _copy_bundle(out, tmp_path / "bundle")
    (copy / "model.onnx").write_bytes((copy / "model-int8.onnx").read_bytes())
    for call in (lambda: predict(copy, tmp_path / "img.png"), lambda: load_runner(copy)):
        with pytest.raises(RepasError, match=r"model\.onnx does not match the SHA-256 recorded in model\.json"):
            call()
    assert "damaged or replaced" in bare_predict(copy, tmp_path / "img.png").stderr
    manifest = json.loads((copy / "model.json").read_text())
    del manifest["sha256"]["model.onnx"]
    (copy / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(RepasError, match=r"records no SHA-256 for model\.onnx"):
        predict(copy, tmp_path / "img.png")
