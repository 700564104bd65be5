"""SR metrics follow the standard protocol and agree with scikit-image; tiling is exact."""

import numpy as np
import pytest
import torch

from repas.colour import rgb_to_cbcr, rgb_to_y, ycbcr_to_rgb
from repas.supernet import build, create_supernet_spec, fuse_repnet
from repas.tasks.super_resolution import crop_border, psnr, quantize, receptive_radius, sr_scores, ssim, upscale_tiled

metrics = pytest.importorskip("skimage.metrics")


def noisy_pair(seed=0, shape=(64, 80, 3)):
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, shape).astype(np.uint8)
    out = np.clip(hr.astype(np.int16) + rng.integers(-20, 21, shape), 0, 255).astype(np.uint8)
    return hr, out


def test_psnr_equals_scikit_image_on_y():
    for seed in range(3):
        hr, out = noisy_pair(seed)
        a, b = crop_border(rgb_to_y(out), 2), crop_border(rgb_to_y(hr), 2)
        ref = metrics.peak_signal_noise_ratio(b, a, data_range=255)
        assert abs(psnr(a, b) - ref) <= 1e-3


def test_ssim_equals_scikit_image_gaussian_ssim():
    hr, out = noisy_pair(4)
    a, b = rgb_to_y(out), rgb_to_y(hr)
    ref = metrics.structural_similarity(b, a, data_range=255, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False)
    assert abs(ssim(a, b) - ref) <= 1e-4


def test_y_is_bt601_and_colour_round_trips():
    assert rgb_to_y(np.array([[[0, 0, 0]]]))[0, 0] == pytest.approx(16.0)
    assert rgb_to_y(np.array([[[255, 255, 255]]]))[0, 0] == pytest.approx(235.0)
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3))
    back = ycbcr_to_rgb(rgb_to_y(rgb), *rgb_to_cbcr(rgb))
    assert np.abs(back - rgb).max() < 0.01


def test_scores_quantize_the_output_to_uint8():
    hr = np.full((20, 20, 1), 100, np.uint8)
    out = torch.full((1, 20, 20), 100.4 / 255.0)  # rounds to 100: a perfect image once quantized
    assert quantize(out)[0, 0, 0] == 100
    assert sr_scores(out, hr, 2)["psnr"] == float("inf")


def test_tiled_inference_equals_untiled():
    torch.manual_seed(0)
    model = fuse_repnet(build(create_supernet_spec("ecbsr-m4c16", scale=3)).eval())
    x = torch.rand(1, 1, 70, 53)
    with torch.no_grad():
        full = model(x)
        tiled = upscale_tiled(model, x, 3, tile=24, overlap=receptive_radius(model))
    assert tiled.shape == full.shape == (1, 1, 210, 159)
    assert float((tiled - full).abs().max()) <= 1e-4
    with torch.no_grad():
        short = upscale_tiled(model, x, 3, tile=24, overlap=1)
    assert float((short - full).abs().max()) > 1e-4  # too small an overlap shows at the seams
