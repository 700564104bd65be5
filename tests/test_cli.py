"""The CLI end to end on small IDX data, and a one-line error for every bad input."""

import importlib.util
import json

import pytest

from repas.cli import main
from repas.search import method_class
from repas.supernet import load_model

QUICK = ["--threads", "2", "--set", "export.runs=20", "--set", "export.warmup=2", "--set", "train.batch_size=64",
         "--set", "search.batch_size=64", "--set", "finetune.batch_size=64"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    from conftest import write_fake_fashion

    tmp = tmp_path_factory.mktemp("cli")
    data = write_fake_fashion(tmp / "data")
    code = main(["pipeline", "--data", str(data), "--run-dir", str(tmp / "run"), "--epochs", "1", *QUICK,
                 "--set", "search.method=eagleeye", "--set", "search.compare=[uniform]"])
    assert code == 0
    return tmp / "run", data


def test_pipeline_writes_every_stage_and_a_report(pipeline_run):
    run_dir, _ = pipeline_run
    for stage in ("train", "search", "extract", "finetune", "fuse", "export", "dense-export"):
        assert (run_dir / stage / "spec.json").exists(), stage
        assert (run_dir / stage / "report.json").exists(), stage
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["searched"]["macs"] <= summary["target"]
    assert summary["cost_vs_target"] >= 0.97
    report = (run_dir / "report.md").read_text()
    assert "| top-1 (%), fused ONNX |" in report and "| top-1 (%) and latency, ONNX int8 | - |" in report
    if importlib.util.find_spec("executorch"):
        assert "| top-1 (%) and latency, ExecuTorch int8 | - |" in report
    # uniform scaling ran beside the search, at the same budget and total epochs (one-shot: the
    # search's epoch goes to fine-tuning), and the report shows it
    uniform = summary["compared"]["uniform"]
    assert summary["cost_vs_target"] >= 0.97 and uniform["macs"] <= summary["target"]
    assert uniform["epochs"] == 2 and summary["searched"]["epochs"] == (1 if method_class(summary["method"]).trains
                                                                        else 2)
    assert "| uniform | " + " / ".join(map(str, uniform["widths"])) in report
    assert (run_dir / "compare-uniform" / "export" / "model.onnx").exists()
    fused = load_model(run_dir / "fuse")
    assert all(b.fused for b in fused.blocks)
    export = json.loads((run_dir / "export" / "report.json").read_text())
    assert export["max_abs_diff_onnx_vs_torch"] <= 1e-4


def test_stages_rerun_alone_and_info(pipeline_run, capsys):
    run_dir, data = pipeline_run
    code, out, _ = run(capsys, "extract", "--run-dir", run_dir, "--data", data, "--round-to", "4", "--set",
                       "extract.fit=false")
    assert code == 0
    widths = load_model(run_dir / "extract").spec.widths
    assert all(w % 4 == 0 or w == full for w, full in zip(widths, [16, 32, 32, 64, 64, 64]))
    code, out, _ = run(capsys, "info", run_dir / "extract")
    assert code == 0 and "total:" in out and "MACs" in out
    code, out, _ = run(capsys, "info", "repvgg-fmnist")
    assert "7,338,880 MACs" in out


@pytest.mark.parametrize("argv,message", [
    (["train", "--data", "{tmp}/nowhere"], "missing Fashion-MNIST files"),
    (["train", "--data", "{data}", "--set", "train.epoch=1"], "unknown key 'epoch' (did you mean 'epochs'?)"),
    (["train", "--data", "{data}", "--set", "model.space=repvgg-fmnst"], "did you mean 'repvgg-fmnist'"),
    (["search", "--run-dir", "{run}", "--data", "{data}", "--target-macs", "1K"], "below the smallest reachable"),
    (["search", "--run-dir", "{run}", "--data", "{data}", "--target-macs", "9M"], "above the dense cost"),
    (["finetune", "--run-dir", "{tmp}/empty", "--data", "{data}"], "run 'repas extract' first"),
    (["fuse", "--from", "{bad_weights}", "--run-dir", "{tmp}/f"], "do not match spec"),
    (["fuse", "--from", "{cut_weights}", "--run-dir", "{tmp}/f"], "corrupt or truncated"),
    (["train", "--data", "{corrupt}", "--run-dir", "{tmp}/c"], "is corrupt or truncated"),
    (["train", "--data", "{data}", "--run-dir", "{bad_ckpt}", "--resume"], "corrupt or truncated"),
    (["train", "--data", "{data}", "--run-dir", "{tmp}/nan", "--set", "train.lr=1e30", "--epochs", "1"],
     "loss became"),
    (["export", "{run}", "--data", "{data}", "--format", "tflite"], "must name onnx and/or pte"),
    (["export", "{run}", "--data", "{data}", "--tile", "12"], "expected HEIGHTxWIDTH"),
    (["export", "{run}", "--run-dir", "{tmp}/other"], "two run directories given"),
    (["search", "--run-dir", "{run}", "--data", "{data}", "--method", "slimmming"], "did you mean 'slimming'"),
    (["search", "--run-dir", "{run}", "--data", "{data}", "--set", "search.strength=-1"], "strength must be > 0"),
])
def test_bad_input_gives_one_line_error(argv, message, pipeline_run, tmp_path, capsys):
    run_dir, data = pipeline_run
    bad_weights = tmp_path / "bad"
    bad_weights.mkdir()
    (bad_weights / "spec.json").write_text((run_dir / "extract" / "spec.json").read_text())
    (bad_weights / "weights.safetensors").write_bytes((run_dir / "train" / "weights.safetensors").read_bytes())
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "spec.json").write_text((run_dir / "train" / "spec.json").read_text())
    (cut / "weights.safetensors").write_bytes((run_dir / "train" / "weights.safetensors").read_bytes()[:500])
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in data.iterdir():
        raw = f.read_bytes()
        (corrupt / f.name).write_bytes(raw[: len(raw) // 2] if "train-images" in f.name else raw)
    bad_ckpt = tmp_path / "ckpt"
    (bad_ckpt / "train").mkdir(parents=True)
    (bad_ckpt / "train" / "checkpoint.pt").write_bytes(b"garbage")
    fmt = dict(tmp=tmp_path, data=data, run=run_dir, bad_weights=bad_weights, cut_weights=cut, corrupt=corrupt,
               bad_ckpt=bad_ckpt)
    code, _, err = run(capsys, *[a.format(**fmt) for a in argv], *QUICK)
    assert code == 2
    assert err.startswith("repas: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_failed_stage_leaves_earlier_outputs_intact(pipeline_run, capsys):
    run_dir, data = pipeline_run
    files = sorted(p for p in (run_dir / "search").rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in files}
    code, _, _ = run(capsys, "search", "--run-dir", run_dir, "--data", data, "--target-macs", "1K")
    assert code == 2
    assert sorted(p for p in (run_dir / "search").rglob("*") if p.is_file()) == files
    assert all(p.read_bytes() == before[p] for p in files)  # nothing written, nothing lost


def test_extract_uses_the_search_target_unless_told_otherwise(pipeline_run, tmp_path, capsys):
    run_dir, data = pipeline_run
    import shutil

    shutil.copytree(run_dir / "search", tmp_path / "search")
    code, _, err = run(capsys, "extract", "--run-dir", tmp_path, "--data", data, "--set", "search.target=0.3")
    assert code == 0, err
    report = json.loads((tmp_path / "extract" / "report.json").read_text())
    searched = json.loads((tmp_path / "search" / "report.json").read_text())
    assert report["target"] == searched["target"]
    code, _, err = run(capsys, "extract", "--run-dir", tmp_path, "--data", data, "--target", "0.3")
    assert code == 0, err
    report = json.loads((tmp_path / "extract" / "report.json").read_text())
    assert report["target"] == pytest.approx(0.3 * 7_338_880)
    assert report["macs"] <= report["target"]


def test_resume_refuses_a_changed_recipe(pipeline_run, tmp_path, capsys):
    run_dir, data = pipeline_run
    code, _, err = run(capsys, "train", "--data", data, "--run-dir", run_dir, "--resume", "--epochs", "1", *QUICK,
                       "--set", "train.lr=0.5")
    assert code == 2 and "training config changed" in err and "lr: 0.1 -> 0.5" in err


@pytest.mark.parametrize("method", ["slimming", "lasso", "torch-pruning"])
def test_a_baseline_method_prunes_the_same_supernet_to_the_same_budget(method, pipeline_run, tmp_path, capsys):
    run_dir, data = pipeline_run
    code, out, err = run(capsys, "search", "--from", run_dir / "train", "--run-dir", tmp_path, "--data", data,
                         "--method", method, "--target", "0.4", "--epochs", "1", *QUICK)
    assert code == 0, err
    searched = json.loads((tmp_path / "search" / "report.json").read_text())
    assert searched["method"] == method and searched["searched_macs"] <= searched["target"]
    assert searched["searched_macs"] >= 0.97 * searched["target"]
    assert ("history" in searched) == (method == "slimming")  # only slimming trains first
    code, out, err = run(capsys, "search", "--from", run_dir / "train", "--run-dir", tmp_path, "--data", data,
                         "--method", method, "--target", "0.4", "--epochs", "1", *QUICK, "--resume", "auto")
    assert code == 0 and "search: complete" in out, err  # a finished search is not run again
    code, out, err = run(capsys, "extract", "--run-dir", tmp_path, "--data", data, *QUICK)
    assert code == 0, err
    extracted = json.loads((tmp_path / "extract" / "report.json").read_text())
    assert extracted["widths"] == searched["widths"]  # extract reads the method's masks as they are


def _mtimes(root):
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_resume_auto_on_a_finished_pipeline_does_nothing(pipeline_run, tmp_path, capsys):
    import shutil

    source, data = pipeline_run
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)  # (other tests rerun stages of the shared run)
    argv = ["pipeline", "--data", data, "--run-dir", run_dir, "--epochs", "1", *QUICK,
            "--set", "search.method=eagleeye", "--set", "search.compare=[uniform]", "--resume", "auto"]
    code, out, err = run(capsys, *argv)  # brings the copy up to date, rerunning only what is stale
    assert code == 0, err
    assert "train: complete" in out and "search: complete" in out  # nothing trained again
    before = _mtimes(run_dir)
    report = (run_dir / "report.md").read_text()
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "nothing to do" in out
    assert _mtimes(run_dir) == before  # no stage reran, no file was rewritten
    assert (run_dir / "report.md").read_text() == report


def test_results_are_easy_to_find(pipeline_run, capsys):
    run_dir, _ = pipeline_run
    search = json.loads((run_dir / "search" / "report.json").read_text())
    extract = json.loads((run_dir / "extract" / "report.json").read_text())
    gates = load_model(run_dir / "search").gate_modules()
    assert search["widths"] == [int(g.mask().sum()) for g in gates]  # the result leads: what the gates keep
    assert search["supernet"]["widths"] == [16, 32, 32, 64, 64, 64] and search["method"] == "eagleeye"
    assert search["searched_macs"] == search["macs"] <= search["supernet"]["macs"]
    assert "Widths chosen by method eagleeye" in (run_dir / "report.md").read_text()
    code, out, _ = run(capsys, "info", run_dir)  # a run directory: its best model, and where the report is
    assert code == 0 and "report.md" in out and "fuse stage" in out
    code, out, _ = run(capsys, "info", run_dir / "extract")
    assert code == 0 and f"total: {extract['macs']:,.0f} MACs" in out
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("repas ")


def test_budget_flags_and_targets_read_as_a_user_means_them(pipeline_run, tmp_path, capsys):
    run_dir, data = pipeline_run
    with pytest.raises(SystemExit) as stop:  # two budgets at once
        main(["search", "--target", "0.5", "--target-macs", "2.5M"])
    assert stop.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    code, _, err = run(capsys, "train", "--set", "search.alpah=1")
    assert code == 2 and err.startswith("repas: error: --set search.alpah=1:") and "did you mean 'alpha'" in err
    import shutil

    shutil.copytree(run_dir / "search", tmp_path / "search")
    code, _, err = run(capsys, "extract", "--run-dir", tmp_path, "--data", data, "--targets", "0.5,0.3", *QUICK)
    assert code == 0, err
    report = json.loads((tmp_path / "targets" / "report.json").read_text())
    assert [r["target_value"] for r in report["subnets"]] == [pytest.approx(0.5 * 7_338_880),
                                                               pytest.approx(0.3 * 7_338_880)]


def test_extract_of_a_net_never_searched_is_an_error(pipeline_run, tmp_path, capsys):
    run_dir, data = pipeline_run
    code, _, err = run(capsys, "extract", "--from", run_dir / "train", "--run-dir", tmp_path, "--data", data)
    assert code == 2 and "never searched" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "extract").exists()


def test_a_search_that_never_reaches_its_target_says_so(pipeline_run, tmp_path, capsys):
    run_dir, data = pipeline_run
    code, out, err = run(capsys, "search", "--from", run_dir / "train", "--run-dir", tmp_path, "--data", data,
                         "--epochs", "1", *QUICK, "--method", "pas-raw", "--set", "search.alpha=0",
                         "--set", "search.gate_lr=1e-6")  # pas-raw: gates all at 1.0, no ranking to fit by
    assert code == 0, err
    assert "repas: warning: the search ended at 2.00 x its target" in out
    searched = json.loads((tmp_path / "search" / "report.json").read_text())
    assert any("did not reach the budget" in w for w in searched["warnings"])
    assert searched["gate_lr"] == 1e-6  # the lr the gates learned at is in the report
    code, out, err = run(capsys, "extract", "--run-dir", tmp_path, *QUICK)
    # the recorded data.root lies outside this run directory: a recorded config may not point there
    assert code == 2 and "sets data.root to" in err and "outside the run directory" in err
    code, out, err = run(capsys, "extract", "--run-dir", tmp_path, "--data", data, *QUICK)
    extracted = json.loads((tmp_path / "extract" / "report.json").read_text())
    assert code == 0 and extracted["warnings"][:len(searched["warnings"])] == searched["warnings"]
    # with no search to rank them (pas-raw's gates all tie at 1.0), the fit empties layers: said too
    assert any("at one channel" in w for w in extracted["warnings"])
    from repas.stages.report import summary_markdown

    summary = {"dense": {}, "searched": {}, "warnings": extracted["warnings"]}
    assert "did not reach the budget" in _warnings_section(summary_markdown, summary)


def _warnings_section(render, summary):
    """The warnings block of report.md, rendered from a summary with the rest filled in."""
    row = {"widths": [1], "macs": 1.0, "params": 1.0, "torch": 1.0, "onnx": 1.0, "onnx_ms": 1.0}
    full = {"run_dir": "r", "seconds": 1.0, "environment": {"date": "d", "processor": "p", "torch": "t"},
            "metric": "top1", "target": 1.0, "cost_metric": "macs", "cost_vs_target": 1.0, "method": "pas",
            "threads": 1, "latency_input": [1, 1, 28, 28], "dense": row, "searched": row,
            "warnings": summary["warnings"]}
    return render(full).split("**Warnings:**")[1]


def test_finetune_distills_from_the_runs_dense_net(pipeline_run, tmp_path, capsys):
    """The teacher is RUN_DIR/train's dense net, and what it says reaches the fine-tune.

    Comparing distill=0.5 with distill=0 would not show that: the task loss's weight (1 - 0.5)
    alone changes the weights, with the teacher ignored. So the fine-tune runs twice with the
    run's dense net (the same weights: it is deterministic, so a difference is not noise) and
    once, all else equal, with a teacher whose head names every class as the next one: only
    a trainer that learns from its teacher's outputs ends elsewhere."""
    import shutil

    from safetensors.torch import load_file, save_file

    run_dir, data = pipeline_run
    shutil.copytree(run_dir / "extract", tmp_path / "extract")
    code, _, err = run(capsys, "finetune", "--run-dir", tmp_path, "--data", data, "--epochs", "1", *QUICK,
                       "--set", "finetune.distill=0.5")
    assert code == 2 and "needs the dense net as its teacher" in err  # no RUN_DIR/train here

    dense = load_file(run_dir / "train" / "weights.safetensors")
    other = {**dense, "head.weight": dense["head.weight"].roll(1, 0).contiguous(),
             "head.bias": dense["head.bias"].roll(1, 0).contiguous()}

    def finetune(where, teacher=None):
        if where != tmp_path:
            shutil.copytree(run_dir / "extract", where / "extract")
        shutil.copytree(run_dir / "train", where / "train")
        if teacher is not None:
            save_file(teacher, where / "train" / "weights.safetensors")
        code, _, err = run(capsys, "finetune", "--run-dir", where, "--data", data, "--epochs", "1", *QUICK,
                           "--set", "finetune.distill=0.5")
        assert code == 0, err
        report = json.loads((where / "finetune" / "report.json").read_text())
        assert report["config"]["distill"] == 0.5 and report["test"]["top1"] > 0
        return load_file(where / "finetune" / "weights.safetensors")

    def distance(a, b):
        assert a.keys() == b.keys()
        return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)

    taught = finetune(tmp_path)
    noise = distance(taught, finetune(tmp_path / "again"))
    assert noise <= 1e-5, f"the same fine-tune twice differs by {noise}"
    moved = distance(taught, finetune(tmp_path / "other", other))
    assert moved > 1e-3, f"another teacher moved the fine-tuned weights by only {moved}"  # 0.03 when written


def test_export_of_another_model_directory_never_replaces_the_runs_bundle(pipeline_run, tmp_path, capsys):
    import shutil

    source, data = pipeline_run
    run_dir = tmp_path / "run"
    for stage in ("dense-fuse", "export"):
        shutil.copytree(source / stage, run_dir / stage)
    before = (run_dir / "export" / "model.json").read_bytes()
    code, _, err = run(capsys, "export", run_dir / "dense-fuse", "--data", data, "--format", "onnx", "--no-int8",
                       *QUICK)
    assert code == 0, err
    assert json.loads((run_dir / "dense-export" / "model.json").read_text())["widths"] == [16, 32, 32, 64, 64, 64]
    assert (run_dir / "export" / "model.json").read_bytes() == before  # the searched bundle is untouched


