"""The README's Python examples run as written."""

import re
from pathlib import Path

import torch

README = (Path(__file__).parents[1] / "README.md").read_text()


def block(containing: str) -> str:
    """The README's python block that contains ``containing``."""
    found = [b for b in re.findall(r"```python\n(.*?)```", README, flags=re.S) if containing in b]
    assert len(found) == 1, f"expected one README python block with {containing!r}, found {len(found)}"
    return found[0]


def test_readme_training_loop_runs_over_a_dataloader_to_a_verified_export(tmp_path, monkeypatch):
    code = block("DataLoader(")
    assert len(code.strip().splitlines()) <= 25  # "at most about 20 lines" of loop
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert isinstance(namespace["loader"], torch.utils.data.DataLoader)
    method, plain, again = namespace["method"], namespace["plain"], namespace["again"]
    cost = float(method.budget.cost(plain.spec.widths))
    assert 0.97 * method.budget.target <= cost <= method.budget.target  # the budget is met
    assert again.spec == plain.spec and all(b.fused for b in again.blocks)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(again(x), namespace["sub"].eval()(x), atol=1e-4, rtol=1e-4)
    assert (tmp_path / "out" / "model.onnx").exists()
    assert namespace["made"]["checks"]["onnx_float_max_abs_diff"] <= 1e-4


def test_readme_method_of_your_own_registers_and_runs():
    import repas
    from repas.search.methods.registry import _METHODS

    namespace: dict = {}
    try:
        exec(compile(block("@repas.register_method"), "README.md", "exec"), namespace)
        assert "largest-bn" in repas.list_methods()
        model = repas.create_model("repvgg-fmnist")
        sub = repas.create_method("largest-bn", model, target=0.5).extract()
        assert repas.spec_cost(sub.spec) <= 0.5 * repas.spec_cost(model.spec)
    finally:
        _METHODS.pop("largest-bn", None)


def test_readme_latency_example_runs():
    namespace: dict = {}
    exec(compile(block("repas.LatencyModel(table, spec)"), "README.md", "exec"), namespace)
    assert all(g.weight.grad is not None for g in namespace["model"].gate_modules())
    masks = namespace["masks"]
    assert namespace["latency"]([int(m.sum()) for m in masks]) <= namespace["budget"].target


def test_readme_user_model_block_prunes_a_torchvision_model_and_round_trips(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(block("GatedModel(net"), "README.md", "exec"), namespace)
    small, again, method = namespace["small"], namespace["again"], namespace["method"]
    assert type(small) is torchvision.models.MobileNetV2
    gated = namespace["gated"]
    cost = float(gated.cost("macs", [int(m.sum()) for m in gated.masks()]))
    assert 0.97 * method.budget.target <= cost <= method.budget.target
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), small.eval()(x))
    from repas.deploy.runner import load_runner, read_manifest

    manifest = read_manifest(namespace["bundle"])  # the bundle repas predict reads, checked as it checks it
    assert manifest["labels"] == list("0123456789") and manifest["checks"]["onnx_float_max_abs_diff"] <= 1e-4
    with torch.no_grad():
        expected = namespace["fuse_user_model"](small)(x[:1]).numpy()
    assert abs(load_runner(namespace["bundle"])(x[:1].numpy()) - expected).max() <= 1e-4
