"""Search at a target latency and many subnets from one search, through the CLI."""

import json

import pytest

from repas.cli import main
from repas.search import LatencyModel
from repas.supernet import load_model

QUICK = ["--threads", "2", "--set", "export.runs=10", "--set", "export.warmup=1", "--set", "train.batch_size=64",
         "--set", "search.batch_size=64", "--set", "finetune.batch_size=64", "--set", "profile.passes=1",
         "--set", "profile.runs=3", "--set", "profile.warmup=1", "--set", "profile.divisor=16"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import write_fake_fashion

    tmp = tmp_path_factory.mktemp("lat")
    data = write_fake_fashion(tmp / "data")
    run = tmp / "run"
    assert main(["train", "--data", str(data), "--run-dir", str(run), "--epochs", "1", *QUICK[:6]]) == 0
    assert main(["profile", "--data", str(data), "--run-dir", str(run), *QUICK]) == 0
    return run, data


def test_profile_writes_a_table_the_search_reads(trained, capsys):
    run, data = trained
    text = (run / "latency.csv").read_text()
    assert text.startswith("# repas-latency-table: 1") and "onnxruntime" in text
    model = LatencyModel.load(run / "latency.csv", load_model(run / "train").spec)
    dense = float(model(model.spec.widths))
    # the CLI takes the target as text: round once so the test compares against exactly what it passed
    target = round(0.6 * dense, 6)
    code = main(["search", "--data", str(data), "--run-dir", str(run), "--epochs", "1",
                 "--target-latency", f"{target:.6f}ms", *QUICK])
    assert code == 0
    report = json.loads((run / "search" / "report.json").read_text())
    assert report["metric"] == "latency" and report["target"] == pytest.approx(target, rel=1e-9)
    assert main(["extract", "--data", str(data), "--run-dir", str(run), *QUICK]) == 0
    extracted = json.loads((run / "extract" / "report.json").read_text())
    assert extracted["predicted_latency"] <= target * (1 + 1e-9)
    assert all(w % 16 == 0 or w == full for w, full in zip(extracted["widths"], model.spec.widths))

    # many subnets from the one search, each fine-tuned, exported and measured
    low, high = round(0.5 * dense, 6), round(0.8 * dense, 6)
    code = main(["extract", "--data", str(data), "--run-dir", str(run), "--from", str(run / "search"),
                 "--targets", f"{low:.6f}ms,{high:.6f}ms", "--finetune", "--epochs", "1", *QUICK])
    assert code == 0
    summary = json.loads((run / "targets" / "report.json").read_text())
    rows = summary["subnets"]
    assert len(rows) == 2
    for row, t in zip(rows, (low, high)):
        assert row["predicted_latency_ms"] <= t * (1 + 1e-9)
        assert row["measured_latency_ms"] > 0 and "top1" in row["onnx_metrics"]
    assert rows[0]["macs"] < rows[1]["macs"]
    assert "measured latency" in (run / "targets" / "report.md").read_text()


def test_latency_without_a_table_is_one_clear_error(trained, tmp_path, capsys):
    run, data = trained
    code = main(["search", "--data", str(data), "--run-dir", str(run), "--latency-table", str(tmp_path / "none.csv"),
                 "--target-latency", "1ms"])
    err = capsys.readouterr().err
    assert code == 2 and "no latency table at" in err and "repas profile" in err and len(err.strip().splitlines()) == 1
    code = main(["extract", "--data", str(data), "--run-dir", str(run), "--from", str(run / "train"),
                 "--targets", "1ms,../up"])
    err = capsys.readouterr().err
    assert code == 2 and "'../up' names a directory" in err and not (run / "targets" / "1ms").exists()
