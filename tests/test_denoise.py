"""Gaussian denoising: the noisy data (seeded, of the stated sigma), its PSNR / SSIM protocol,
and ``repas pipeline`` on a user's U-Net (repas.models.UNet) through search, fine-tuning, the
pickle-free save, the verified bundle and ``repas predict``."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from repas.cli import main
from repas.data.noisy_images import NoisyPatchLoader, fixed_noise, noisy_images
from repas.data.sr_images import PatchLoader, SRPair
from repas.models import UNet
from repas.tasks.denoising import DenoisingTask


def _smooth_rgb(seed: int, h: int, w: int) -> np.ndarray:
    """A smooth colour image with a few edges (something a denoiser can learn)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    planes = [np.sin(rng.uniform(2, 9) * x + rng.uniform(0, 3)) * np.cos(rng.uniform(2, 9) * y) for _ in range(3)]
    img = (np.stack(planes, -1) * 0.35 + 0.5) * 255
    img[h // 3:h // 2, w // 4:w // 2] = rng.uniform(0, 255, 3)
    return img.clip(0, 255).astype(np.uint8)


def _pairs(n: int = 3, h: int = 80, w: int = 96) -> list[SRPair]:
    return [SRPair(f"p{i}", _smooth_rgb(i, h, w), _smooth_rgb(i, h, w)) for i in range(n)]


def test_training_noise_has_the_stated_sigma_and_is_replayed_by_seed_and_epoch():
    loader = NoisyPatchLoader(PatchLoader(_pairs(), 1, "y", patch=32, batch_size=8, batches_per_epoch=3), 25, seed=0)
    batches = list(loader)
    noise = torch.cat([noisy - clean for noisy, clean in batches])
    assert noise.std().item() * 255 == pytest.approx(25, rel=0.03)
    assert abs(noise.mean().item()) * 255 < 0.5
    again = list(loader)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    loader.set_epoch(1)
    assert not torch.equal(next(iter(loader))[0], batches[0][0])
    with pytest.raises(Exception, match="scale-1 PatchLoader"):
        NoisyPatchLoader(PatchLoader(_pairs(), 2, "y", patch=16, batch_size=2), 25, seed=0)


def test_the_noisy_input_scores_what_its_sigma_says():
    pairs = _pairs()
    images = noisy_images(pairs, "y", 25)
    assert torch.equal(images[1][0], noisy_images(pairs, "y", 25)[1][0])  # the same noise in every run
    zeros = torch.zeros(1, 1, 8, 8)
    assert not torch.equal(fixed_noise(zeros, 25, 0), fixed_noise(zeros, 25, 1))  # each image its own noise
    scores = DenoisingTask().evaluate(lambda x: x, images)
    # 20.17 dB at sigma 25; the sample's variance (23k pixels: 0.05 dB), quantization and clipping move it a little
    assert scores["psnr"] == pytest.approx(20 * math.log10(255 / 25), abs=0.25)
    assert scores["ssim"] < 0.6
    clean = DenoisingTask().evaluate(lambda x: x, [(x - fixed_noise(x * 0, 25, i), t) for i, (x, t) in
                                                   enumerate(images)])
    assert clean["psnr"] > 50 and clean["ssim"] > 0.999


def test_a_unet_restores_an_image_whose_sides_are_not_multiples_of_its_poolings():
    net = UNet(1, 8).eval()
    x = torch.rand(1, 1, 30, 37)
    with torch.no_grad():
        out = DenoisingTask().restore(net, x)
        padded = net(torch.nn.functional.pad(x, (0, 3, 0, 2), mode="replicate"))[..., :30, :37]
    assert out.shape == x.shape and torch.equal(out, padded)


def _write_images(root, n, seed, h=96, w=128):
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(_smooth_rgb(seed + i, h, w)).save(root / f"im{i}.png")
    return root


QUICK = ["--threads", "2", "--epochs", "1", "--set", "export.runs=5", "--set", "export.warmup=1"]


@pytest.fixture(scope="module")
def denoise_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("denoise")
    train, test = _write_images(tmp / "train", 4, 0), _write_images(tmp / "test", 2, 10)
    sets = ["data.name=denoise-folder", f"data.test_root={test}", "data.cache_dir=null", "data.patch=32",
            "data.batches_per_epoch=4", "model.builder=repas.models:UNet", "model.kwargs={channels: 1, width: 8}",
            "search.method=uniform", "search.compare=[pas]", "export.tile=[96, 96]", "train.opt=adam",
            "train.lr=0.002", "train.batch_size=8", "search.batch_size=8", "finetune.batch_size=8"]
    code = main(["pipeline", "--config", "configs/unet_denoise.yaml", "--data", str(train),
                 "--run-dir", str(tmp / "run"), *QUICK, *[a for s in sets for a in ("--set", s)]])
    assert code == 0
    return tmp / "run", test


def test_every_method_meets_the_budget_and_its_bundle_equals_its_saved_model(denoise_run):
    from repas.deploy.runner import load_runner
    from repas.graph import load_pruned

    run, _ = denoise_run
    report = json.loads((run / "report.json").read_text())
    assert report["task"] == "denoising" and list(report["methods"]) == ["uniform", "pas"]
    assert 20 < report["baseline"]["psnr"] < 21  # the noisy test inputs at sigma 25
    for name, r in report["methods"].items():
        assert 0.97 <= r["cost_vs_target"] <= 1.0, name
        assert "psnr" in r["finetune"]["test"] and "ssim" in r["finetune"]["test"]
        out = run if name == "uniform" else run / f"compare-{name}"
        model = load_pruned(out / "pruned").eval()
        assert type(model).__name__ == "UNet"
        x = torch.rand(1, 1, 96, 96, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = model(x).numpy()
        got = load_runner(out / "export")(x.numpy())  # fused (BN folded) and in onnxruntime
        assert np.abs(got - expected).max() <= 1e-4
        # nearest upsampling has no XNNPACK kernel: exported as transposed convs of ones, the whole U-Net
        # runs in the delegate, float and int8
        assert r["formats"] == ["onnx", "pte"] and "pte_skipped" not in r
        manifest = json.loads((out / "export" / "model.json").read_text())
        assert set(manifest["files"]["onnx"]) == set(manifest["files"]["pte"]) == {"float", "int8"}
        assert manifest["checks"]["pte_rewritten_modules"] and manifest["checks"]["pte_float_max_abs_diff"] <= 1e-4
        int8, fp32 = manifest["metrics"]["onnx int8"]["psnr"], manifest["metrics"]["onnx float"]["psnr"]
        assert abs(int8 - fp32) < 1.0  # calibrated on noisy training tiles (an untrained net here)
        assert manifest["task"] == "denoising" and manifest["scale"] == 1
        assert manifest["input"]["noise_sigma"] == 25
        exported = json.loads((out / "export" / "report.json").read_text())["onnx_metrics"]["psnr"]
        # the bundle is scored by tiles of 96 (repas predict's way), PyTorch by whole images
        assert exported == pytest.approx(r["finetune"]["test"]["psnr"], abs=0.1)
    md = (run / "report.md").read_text()
    assert "psnr (PyTorch)" in md and "The noisy input itself: psnr 20." in md


def test_repas_predict_denoises_an_image_of_its_own_size(denoise_run, tmp_path, capsys):
    run, test = denoise_run
    out = tmp_path / "clean.png"
    assert main(["predict", str(run / "export"), str(test / "im0.png"), "-o", str(out)]) == 0
    assert "128x96 -> 128x96" in capsys.readouterr().out
    assert np.asarray(Image.open(out)).shape == (96, 128, 3)
    assert main(["predict", str(run / "export"), str(test / "im0.png")]) == 2
    assert "a denoising bundle writes an image: give -o OUTPUT.png" in capsys.readouterr().err


def test_denoising_data_with_a_search_space_or_a_bad_sigma_is_a_clear_error(denoise_run, capsys):
    run, test = denoise_run
    base = ["pipeline", "--data", str(test), "--run-dir", str(run.parent / "bad"), "--set", "data.name=denoise-folder",
            "--set", f"data.test_root={test}"]
    assert main([*base, "--set", "data.sigma=0"]) == 2
    assert "data sigma is the noise's standard deviation on the 0-255 scale" in capsys.readouterr().err
    assert main([*base, "--set", "model.builder=repas.models:UNet", "--set", "export.tile=[64, 64]"]) == 2
    assert "set export.tile to at least [128, 128]" in capsys.readouterr().err
    assert main([*base, "--set", "model.space=repvgg-fmnist", "--set", "export.tile=[128, 128]"]) == 2
    assert "trains your own image-to-image model: set model.builder" in capsys.readouterr().err
    assert not (run.parent / "bad" / "report.json").exists()
