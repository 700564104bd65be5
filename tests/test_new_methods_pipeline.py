"""The methods of issue 33 and the agent of issue 32 (cap, casd, ffr, evolution) each run
through ``repas pipeline`` (search, extract, fine-tune, fuse, export) on the Fashion-MNIST
config with tiny epochs, from one dense net, and meet the budget; ``repas methods`` lists
them with their summary lines."""

import json

from repas.cli import main

NEW = ["cap", "casd", "ffr", "evolution"]


def test_each_new_method_runs_through_the_pipeline_and_meets_the_budget(tmp_path, capsys, monkeypatch):
    from conftest import method_reports, tiny_method_pipeline, write_fake_fashion

    from repas.search.methods.adaptive_bn import AdaptiveBN
    from repas.search.methods.evolution import Evolution

    monkeypatch.setattr(AdaptiveBN, "input_count", 256)  # the same code on fewer images: a test's time
    monkeypatch.setattr(Evolution, "population", 4)
    monkeypatch.setattr(Evolution, "generations", 2)
    data = write_fake_fashion(tmp_path / "data")
    run = tmp_path / "run"
    code = main(tiny_method_pipeline(data, run, "cap", NEW[1:]))
    assert code == 0, capsys.readouterr().err
    for name in NEW:
        where, searched, extracted = method_reports(run, "cap", name)
        assert 0.97 <= extracted["cost_vs_target"] <= 1.0 + 1e-9, name
        assert (where / "export" / "model.onnx").is_file(), name
    cap = json.loads((run / "search" / "report.json").read_text())["method_metrics"]
    assert cap["layers_compensated"] >= 1 and cap["compensation_seconds"] > 0
    capsys.readouterr()
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    for name in NEW:
        assert any(line.split()[:1] == [name] and len(line.split()) > 3 for line in listed.splitlines()), name
