"""``search.pte_latency`` with ``search.precision: int8``: the pipeline measures uniform
widths as .pte files against the dense float net, ships the widest int8 net within the
budget (QAT), and runs the float net held to the same budget beside it (``uniform@float``)."""

import json

import pytest

from repas.cli import main
from repas.errors import RepasError


def test_an_int8_net_and_a_float_net_at_the_same_measured_latency(tmp_path, capsys, monkeypatch):
    pytest.importorskip("executorch")  # CI installs it with the deploy extra
    from conftest import write_fake_fashion

    import repas.stages.measured_latency as measured

    monkeypatch.setattr(measured, "GRID", (1.0, 0.35, 0.1))  # the same code on fewer nets

    data = write_fake_fashion(tmp_path / "data")
    run = tmp_path / "run"
    code = main(["pipeline", "--data", str(data), "--run-dir", str(run), "--threads", "2", "--epochs", "1",
                 "--set", "train.batch_size=64", "--set", "search.batch_size=64", "--set", "finetune.batch_size=64",
                 "--set", "search.precision=int8", "--set", "search.pte_latency=0.5",
                 "--set", "search.compare=[uniform@float]", "--set", "export.runs=20", "--set", "export.warmup=2",
                 "--set", "export.qat_epochs=0.25", "--set", "extract.round_to=4"])
    err = capsys.readouterr().err
    assert code == 0, err
    fit = json.loads((run / "pte-latency.json").read_text())
    budget = fit["budget_ms"]
    assert budget == pytest.approx(0.5 * fit["dense_float_ms"])
    for precision, target in fit["choice"].items():  # the widest grid net of that precision within the budget
        rows = {r["target"]: r for r in fit["grid"]}
        assert rows[target][precision] <= budget
        assert all(r[precision] > budget for t, r in rows.items() if t > target)
    assert fit["choice"]["int8"] >= fit["choice"]["float"]  # int8's speed buys width
    manifest = json.loads((run / "export" / "model.json").read_text())
    assert manifest["checks"]["qat"]["epochs"] == 0.25  # the shipped int8 .pte was trained, not calibrated
    assert manifest["recommended_precision"]["executorch"] in ("int8", "float")
    floats = json.loads((run / "compare-uniform@float" / "export" / "model.json").read_text())
    assert "float" in floats["files"]["pte"] and "int8" not in floats["files"]["pte"]
    summary = json.loads((run / "summary.json").read_text())["pte_latency"]
    assert set(summary["nets"]) == {"dense", "searched", "uniform@float"}
    assert summary["nets"]["searched"]["precision"] == "int8" and summary["nets"]["dense"]["vs_dense_float"] == 1.0
    md = (run / "report.md").read_text()
    assert "Latency budget: 0.5 x the dense float net's .pte" in md and "**searched (shipped)** | int8" in md
    assert "| uniform@float | float |" in md


@pytest.mark.parametrize("sets, message", [
    (["search.pte_latency=1.5"], "pte_latency must lie in (0, 1]"),
    (["search.pte_latency=0.5", "search.method=eagleeye"], "measures uniform widths"),
    (["search.precision=int4"], "search precision 'int4': one of float, int8"),
    (["search.compare=[uniform@fp16]"], "after '@' comes a precision"),
])
def test_bad_precision_settings_are_one_line(sets, message):
    from repas.config import load_config

    with pytest.raises(RepasError, match=message.replace("(", r"\(").replace("]", r"\]").replace("[", r"\[")):
        load_config(None, sets)


def test_a_measured_budget_outside_the_pipeline_is_one_line(tmp_path, capsys):
    code = main(["search", "--run-dir", str(tmp_path / "run"), "--set", "search.pte_latency=0.5"])
    err = capsys.readouterr().err
    assert code == 2 and "search.pte_latency is a budget 'repas pipeline' measures" in err
    assert not (tmp_path / "run" / "search").exists()
