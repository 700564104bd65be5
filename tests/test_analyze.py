"""``repas analyze``: linear CKA and SVCCA (``repas.similarity``), and the command on a real
dense / pruned pair."""

import json

import pytest
import torch

from repas.cli import main
from repas.similarity import linear_cka, svcca


def test_cka_and_svcca_see_through_rotation_and_scale_but_not_unrelated_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 12, generator=g)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3 * x @ q + 5) == pytest.approx(1.0, abs=1e-9)
    assert svcca(x, 3 * x @ q + 5) == pytest.approx(1.0, abs=1e-9)
    noise = torch.randn(300, 12, generator=g)
    assert linear_cka(x, noise) < 0.15 and svcca(x, noise) < 0.3
    # half the channels kept (a pruned layer): related, not identical
    assert 0.3 < linear_cka(x, x[:, :6]) < 0.9
    # feature maps: CKA over whole maps, SVCCA over channels averaged over positions
    maps = torch.randn(64, 4, 5, 5, generator=g)
    assert linear_cka(maps, maps.flip(1)) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="same inputs"):
        linear_cka(x, x[:10])


def test_repas_analyze_compares_every_block_of_a_dense_and_a_pruned_net(tmp_path, capsys):
    from conftest import write_fake_fashion

    data = write_fake_fashion(tmp_path / "data")
    run = tmp_path / "run"
    quick = ["--data", str(data), "--run-dir", str(run), "--threads", "2", "--set", "train.batch_size=64",
             "--set", "search.batch_size=64"]
    assert main(["train", "--epochs", "1", *quick]) == 0
    assert main(["search", "--epochs", "1", "--set", "search.method=uniform", "--target", "0.4", *quick]) == 0
    assert main(["extract", *quick]) == 0
    out = tmp_path / "an"
    assert main(["analyze", str(run / "train"), str(run / "extract"), "--images", "96", "--out", str(out),
                 "--data", str(data)]) == 0
    result = json.loads((out / "analyze.json").read_text())
    blocks = len(result["layers"])
    assert result["images"] == 96 and blocks == len(result["cka_matrix"]) == len(result["cka_matrix"][0]) > 2
    assert all(0.0 <= r["cka"] <= 1.0 + 1e-9 and 0.0 <= r["svcca"] <= 1.0 + 1e-9 for r in result["layers"])
    assert sum(r["pruned_width"] for r in result["layers"]) < sum(r["dense_width"] for r in result["layers"])
    assert (out / "analyze.png").read_bytes()[:4] == b"\x89PNG"
    assert "| block | dense width | pruned width | linear CKA | SVCCA |" in (out / "analyze.md").read_text()
    # a net against itself: every block the same representation
    assert main(["analyze", str(run / "train"), str(run / "train"), "--images", "32", "--out", str(tmp_path / "self"),
                 "--data", str(data)]) == 0
    same = json.loads((tmp_path / "self" / "analyze.json").read_text())
    assert all(r["cka"] == pytest.approx(1.0, abs=1e-6) and r["svcca"] == pytest.approx(1.0, abs=1e-6)
               for r in same["layers"])
    # not a pruned version of the same net: one clear line
    code = main(["analyze", str(run / "train"), str(tmp_path / "nowhere"), "--data", str(data)])
    assert code == 2 and "nowhere" in capsys.readouterr().err
