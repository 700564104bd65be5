"""scripts/bench_harness.py, which the study scripts share: seeds given once each, a row
store that resumes and writes atomically, the table cell and the header line."""

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from bench_harness import RowStore, cell, command, header, seeds_arg  # noqa: E402


def test_seeds_are_a_list_and_a_repeated_seed_is_refused(capsys):
    p = argparse.ArgumentParser()
    seeds_arg(p, "0,1,2")
    assert p.parse_args([]).seeds == [0, 1, 2]
    assert p.parse_args(["--seeds", "3,1"]).seeds == [3, 1]
    with pytest.raises(SystemExit):
        p.parse_args(["--seeds", "0,1,0"])
    assert "seed 0 is repeated in '0,1,0'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        p.parse_args(["--seeds", "a"])


def test_the_row_store_resumes_and_keeps_the_other_keys(tmp_path):
    path = tmp_path / "rows.json"
    store = RowStore(path, settings={"epochs": 4})
    assert not store.has(method="uniform", seed=0)
    store.add({"method": "uniform", "seed": 0, "top1": 91.0})
    store.add({"method": "pas", "seed": 0, "top1": 90.0})
    again = RowStore(path)  # a new process: what was written is there
    assert again.has(method="uniform", seed=0) and not again.has(method="uniform", seed=1)
    assert again.find(method="pas")["top1"] == 90.0 and "finished" in again.find(method="pas")
    assert again.doc["settings"] == {"epochs": 4}
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob(".*"))  # atomic: no leftovers
    path.write_text(json.dumps([{"seed": 5}]))  # an older bare list of rows
    assert RowStore(path).has(seed=5)


def test_the_cell_and_the_header():
    assert cell([1.0, 2.0, 3.0]) == "2.00 ± 1.00"
    assert cell([1.0, 3.0], 1, count=True) == "2.0 ± 1.4 (2)"
    assert cell([0.5, -0.25], 2, each=True, sign=True) == "+0.12 ± 0.53 (+0.50, -0.25)"
    assert cell([7.0]) == "7.00 ± 0.00" and cell([]) == "-"
    argv = ["/x/scripts/bench_pareto.py", "--seeds", "0,1", "--set", "a=b c"]
    assert command(argv).endswith("python scripts/bench_pareto.py --seeds 0,1 --set 'a=b c'")
    line = header("1 thread", argv)
    assert "torch " in line and "1 thread" in line and line.endswith("--set 'a=b c'`")
