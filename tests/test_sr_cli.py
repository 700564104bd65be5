"""The SR pipeline end to end on a small folder of images, and `repas upscale`."""

import json

import numpy as np
import pytest
from PIL import Image
from test_sr_data import smooth_image

from repas.cli import main


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sr")
    for i in range(3):
        (tmp / "train").mkdir(exist_ok=True)
        (tmp / "test").mkdir(exist_ok=True)
        Image.fromarray(smooth_image(96, 112, seed=i)).save(tmp / "train" / f"{i}.png")
    Image.fromarray(smooth_image(60, 76, seed=9)).save(tmp / "test" / "t.png")
    sets = ["data.name=sr-folder", f"data.test_root={tmp / 'test'}", "data.batches_per_epoch=3", "data.patch=16",
            "data.cache_dir=null", "model.space=ecbsr-m4c16", "search.target=0.5", "search.alpha=0.002",
            "search.gate_lr=1.0", "export.runs=3", "export.warmup=1", "model.branches=null", "export.tile=[32,32]",
            "export.calibration=2"]
    for stage in ("train", "search", "finetune"):
        sets += [f"{stage}.opt=adam", f"{stage}.lr=0.001", f"{stage}.batch_size=4", f"{stage}.weight_decay=0"]
    argv = ["pipeline", "--data", str(tmp / "train"), "--run-dir", str(tmp / "run"), "--epochs", "1",
            "--threads", "2"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    return tmp


def _y(rgb):
    """BT.601 luma as MATLAB's rgb2ycbcr gives it, in [16, 235] (float)."""
    rgb = rgb.astype(np.float64)
    return 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255


def _psnr(a, b, border):
    """PSNR (data range 255) of two Y images with ``border`` pixels cropped on every side."""
    a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    return 10 * np.log10(255 ** 2 / np.mean((a - b) ** 2))


def test_sr_pipeline_reports_psnr_and_bicubic(sr_run):
    """The PSNRs the run reports are the ones recomputed here, by the protocol written out
    (bicubic LR, Y in, output clamped and rounded to 8 bits, the scale cropped, range 255):
    the saved fused model's on the test image, and bicubic upscaling's."""
    import torch

    from repas.supernet import load_model

    summary = json.loads((sr_run / "run" / "summary.json").read_text())
    assert summary["metric"] == "psnr"
    assert summary["searched"]["macs"] <= summary["target"]
    assert set(summary["baseline"]) == {"psnr", "ssim"}
    hr = np.asarray(Image.open(sr_run / "test" / "t.png").convert("RGB"))  # 60x76: a multiple of the scale
    scale, (h, w) = 2, hr.shape[:2]
    lr = np.asarray(Image.fromarray(hr).resize((w // scale, h // scale), Image.BICUBIC))
    model = load_model(sr_run / "run" / "fuse").eval()
    with torch.no_grad():  # the whole image at once: the evaluation's tiles (and overlap) give the same
        out = model(torch.from_numpy(_y(lr) / 255).float()[None, None])[0, 0]
    out = (out.clamp(0, 1) * 255).round().double().numpy()
    psnr = _psnr(out, _y(hr), scale)
    assert summary["searched"]["torch"] == pytest.approx(psnr, abs=0.01)
    # and the model restores the image: well above a flat grey one (38 dB against 22 when written)
    flat = _psnr(np.full((h, w), _y(hr).mean()), _y(hr), scale)
    assert psnr > flat + 6, (psnr, flat)
    bicubic = np.round(_y(np.asarray(Image.fromarray(lr).resize((w, h), Image.BICUBIC))))  # Y quantized
    assert summary["baseline"]["psnr"] == pytest.approx(_psnr(bicubic, _y(hr), scale), abs=0.01)
    export = json.loads((sr_run / "run" / "export" / "report.json").read_text())
    assert export["max_abs_diff_onnx_vs_torch"] <= 1e-4
    # ONNX runs static 32x32 tiles, edge-padded where the image ends: near the whole-image PSNR
    assert export["onnx_metrics"]["psnr"] == pytest.approx(psnr, abs=0.25)
    assert "PSNR (dB, Y), fused ONNX" in (sr_run / "run" / "report.md").read_text()


def test_upscale_writes_an_image_of_scale_times_the_size(sr_run, capsys):
    src = sr_run / "in.png"
    Image.fromarray(smooth_image(40, 50, seed=3)).convert("RGBA").save(src)
    out = sr_run / "out.png"
    assert main(["upscale", str(src), "--model", str(sr_run / "run"), "-o", str(out), "--tile", "16"]) == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (80, 100, 3)
    assert main(["upscale", str(sr_run / "missing.png"), "--model", str(sr_run / "run"), "-o", str(out)]) == 2
    assert "no image at" in capsys.readouterr().err


def test_predict_on_the_sr_bundle_matches_upscale(sr_run, capsys):
    """`repas predict` (static 32x32 tiles through onnxruntime) gives the image `repas upscale`
    (PyTorch, free-size tiles) gives, up to rounding; the int8 model stays close to it."""
    src = sr_run / "in2.png"
    Image.fromarray(smooth_image(45, 70, seed=4)).save(src)
    bundle = sr_run / "run" / "export"
    manifest = json.loads((bundle / "model.json").read_text())
    assert manifest["task"] == "super-resolution" and manifest["scale"] == 2
    assert manifest["input"]["shape"] == [1, 1, 32, 32] and manifest["input"]["colour"] == "y"
    assert main(["upscale", str(src), "--model", str(sr_run / "run"), "-o", str(sr_run / "ref.png")]) == 0
    outs = {}
    for precision in ("float", "int8"):
        out = sr_run / f"pred-{precision}.png"
        assert main(["predict", str(bundle), str(src), "-o", str(out), "--precision", precision]) == 0
        outs[precision] = np.asarray(Image.open(out)).astype(int)
    ref = np.asarray(Image.open(sr_run / "ref.png")).astype(int)
    assert outs["float"].shape == ref.shape == (90, 140, 3)
    assert np.abs(outs["float"] - ref).max() <= 1
    assert np.abs(outs["int8"] - ref).mean() < 3
    assert main(["predict", str(bundle), str(src)]) == 2
    assert "give -o OUTPUT.png" in capsys.readouterr().err


def test_a_copied_stage_directory_exports_with_its_own_recorded_config(sr_run, tmp_path, capsys):
    """No --config: `repas export DIR/fuse` reads the SR config the fuse stage recorded, so the
    SR net is scored as SR (not on Fashion-MNIST, the default config's data), and the
    bundle lands whole in DIR/export."""
    import shutil

    shutil.copytree(sr_run / "run" / "fuse", tmp_path / "fuse")
    assert (tmp_path / "fuse" / "config.json").exists()
    code = main(["export", str(tmp_path / "fuse"), "--format", "onnx", "--no-int8"])
    # its recorded data.root lies outside the copy: a recorded config may not point there
    assert code == 2 and "outside the run directory" in capsys.readouterr().err
    recorded = json.loads((tmp_path / "fuse" / "config.json").read_text())["data"]
    code = main(["export", str(tmp_path / "fuse"), "--format", "onnx", "--no-int8", "--data", recorded["root"],
                 "--set", f"data.test_root={recorded['test_root']}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    manifest = json.loads((tmp_path / "export" / "model.json").read_text())
    assert manifest["task"] == "super-resolution" and set(manifest["metrics"]["onnx float"]) == {"psnr", "ssim"}
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.json", "model.onnx",
                                                                      "report.json", "spec.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "fuse"]  # nothing else left behind


@pytest.mark.parametrize("stage", ["finetune", "export"])
def test_an_sr_model_in_a_classification_stage_is_one_clear_line(sr_run, fake_fashion, tmp_path, stage, capsys):
    source = sr_run / "run" / ("extract" if stage == "finetune" else "fuse")
    config = tmp_path / "fmnist.yaml"
    config.write_text(f"data:\n  name: fashion-mnist\n  root: {fake_fashion}\n")
    code = main([stage, "--config", str(config), "--from", str(source), "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "super-resolution model" in err and "classification" in err
    assert not (tmp_path / "r").exists()  # no tb/, no half-written bundle
