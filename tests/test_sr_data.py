"""SR data: pairs, odd image modes converted or skipped with a warning, patches, packaged sets."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from repas.data.sr_images import (
    PatchLoader,
    check_scale,
    image_files,
    load_pairs,
    make_pair,
    packaged_photos,
    split_packaged,
)
from repas.errors import RepasError


def smooth_image(h=96, w=128, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([127 + 100 * np.sin(xx / (7 + c) + rng.random() * 6) * np.cos(yy / (9 + c)) for c in range(3)], -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_pair_sizes_and_bicubic_lr():
    hr, lr = make_pair(smooth_image(101, 130), scale=3)
    assert hr.shape == (99, 129, 3) and lr.shape == (33, 43, 3)
    hr2, _ = make_pair(smooth_image(200, 300), scale=2, hr_downscale=2, crop=(64, 80))
    assert hr2.shape == (64, 80, 3)
    with pytest.raises(RepasError, match="scale must be one of"):
        check_scale(5)


def test_odd_modes_are_converted_and_bad_files_skipped_with_a_list(tmp_path):
    base = smooth_image()
    Image.fromarray(base).save(tmp_path / "rgb.png")
    Image.fromarray(base[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([base, np.full(base.shape[:2], 200, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(base).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(base[..., 0].astype(np.uint16) * 257).save(tmp_path / "deep.png")
    Image.fromarray(base[:20, :20]).save(tmp_path / "tiny.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = load_pairs(image_files(tmp_path), scale=2, min_lr=16)
    text = " ".join(str(w.message) for w in caught)
    assert sorted(p.name for p in pairs) == ["deep", "grey", "palette", "rgb", "rgba"]
    for name in ("grey.png", "rgba.png", "palette.png", "deep.png", "tiny.png", "broken.jpg"):
        assert name in text, name
    assert all(p.hr.dtype == np.uint8 and p.hr.shape[-1] == 3 for p in pairs)
    deep = next(p for p in pairs if p.name == "deep")
    assert abs(int(deep.hr[..., 0].astype(int).mean()) - int(base[..., 0].astype(int).mean())) <= 3


def test_no_usable_image_is_a_clear_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"junk")
    with pytest.raises(RepasError, match="no usable image"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_pairs(image_files(tmp_path), scale=2)


def test_div2k_layout_reads_the_hr_folder(tmp_path):
    (tmp_path / "DIV2K_train_HR").mkdir()
    (tmp_path / "DIV2K_train_LR_bicubic").mkdir()
    Image.fromarray(smooth_image()).save(tmp_path / "DIV2K_train_HR" / "0001.png")
    assert [p.name for p in image_files(tmp_path)] == ["0001.png"]


def test_patch_loader_is_deterministic_and_aligned():
    pairs = load_pairs([("a", smooth_image(seed=1)), ("b", smooth_image(80, 90, seed=2))], scale=2)
    a = PatchLoader(pairs, 2, "y", patch=16, batch_size=4, batches_per_epoch=3, seed=1)
    b = PatchLoader(pairs, 2, "y", patch=16, batch_size=4, batches_per_epoch=3, seed=1)
    a.set_epoch(1)
    b.set_epoch(1)
    for (la, ha), (lb, hb) in zip(a, b):
        assert torch.equal(la, lb) and torch.equal(ha, hb)
        assert la.shape == (4, 1, 16, 16) and ha.shape == (4, 1, 32, 32)
        # LR is the bicubic image of HR: a 2x box-average of HR stays close to LR
        pooled = torch.nn.functional.avg_pool2d(ha, 2)
        assert float((pooled - la).abs().mean()) < 0.03
    with pytest.raises(RepasError, match="smaller than a 64-pixel"):
        PatchLoader(pairs, 2, "y", patch=64)


def test_packaged_photos_split():
    try:
        photos = packaged_photos()
    except RepasError:
        pytest.skip("the wallpaper packages are not installed (make test installs them as root)")
    train, test = split_packaged(photos)
    assert len(photos) == 38 and len(train) == 30 and len(test) == 8
    assert not any("umang" in p.name for p in photos)
