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


def test_width_and_precision_searched_together_ship_as_the_int8_pte_float_layers(trained, tmp_path, capsys):
    """search.int8_latency_table: each layer priced in its fastest precision; the extracted
    widths meet the target so priced, the extract report says each layer's precision, and
    the int8 .pte keeps the float ones float."""
    pytest.importorskip("executorch")
    from test_latency_int8 import tables

    from repas.latency_table import layer_key
    from repas.search.exact_allocation import chain_cost, fastest_precisions

    run, data = trained
    spec = load_model(run / "train").spec
    t = tables(spec)  # synthetic float and int8 tables of this spec (int8 parts 2.5x cheaper)
    first = layer_key(spec, 0)  # but the first layer slower in int8 than in float (as the 1 -> 16 layer is)
    t["int8"][0].entries[first] = {cc: 2 * v + 1.0 for cc, v in t["float"][0].entries[first].items()}
    t["float"][0].save(tmp_path / "float.csv")
    t["int8"][0].save(tmp_path / "int8.csv")
    mixed = LatencyModel(t["float"][0], spec, int8_table=t["int8"][0])
    target = round(0.3 * float(mixed.at(spec.widths, ["float"] * len(spec.layers))), 6)
    sets = ["--set", f"search.latency_table={tmp_path / 'float.csv'}",
            "--set", f"search.int8_latency_table={tmp_path / 'int8.csv'}", "--set", "extract.round_to=4",
            "--set", "search.method=uniform", "--run-dir", str(tmp_path / "run"), "--data", str(data), *QUICK]
    import shutil

    shutil.copytree(run / "train", tmp_path / "run" / "train")
    assert main(["search", "--target-latency", f"{target:.6f}ms", *sets]) == 0
    assert main(["extract", *sets]) == 0
    extracted = json.loads((tmp_path / "run" / "extract" / "report.json").read_text())
    widths, precision = extracted["widths"], extracted["precision"]
    assert precision == fastest_precisions(spec, chain_cost(spec, mixed), widths)
    assert precision[0] == "float" and "int8" in precision  # each layer where it runs fastest
    assert float(mixed.at(widths, precision)) <= target * (1 + 1e-9) < float(mixed.at(widths, ["float"] * len(widths)))
    assert main(["fuse", "--from", str(tmp_path / "run" / "extract"), *sets]) == 0
    code = main(["export", "--format", "pte", *sets])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "run" / "export" / "model.json").read_text())
    kept = [f"blocks.{i}.reparam_conv" for i, p in enumerate(precision) if p == "float"]
    assert manifest["checks"]["pte_int8_float_layers"] == kept == ["blocks.0.reparam_conv"]
    assert [manifest["checks"]["pte_int8_layer_precision"][f"blocks.{i}.reparam_conv"]
            for i in range(len(precision))] == precision
    # the option is for latency budgets only: one clear line otherwise
    code = main(["search", "--target", "0.5", "--set", "search.metric=macs", *sets])
    assert code == 2 and "search.int8_latency_table prices a latency budget" in capsys.readouterr().err
