"""The README's Python example runs as written."""

import re
from pathlib import Path


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert (tmp_path / "out" / "model.onnx").exists()
    assert namespace["again"].spec == namespace["plain"].spec


def test_readme_latency_example_runs(capsys):
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.findall(r"```python\n(.*?)```", text, flags=re.S)[1]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert all(g.weight.grad is not None for g in namespace["model"].gate_modules())
    masks = namespace["masks"]
    assert namespace["latency"]([int(m.sum()) for m in masks]) <= namespace["budget"].target
