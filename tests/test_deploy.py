"""Deployment files are equalities too: .onnx in onnxruntime and .pte in ExecuTorch equal the
fused PyTorch net within 1e-4 (float32) for the default classification and SR subnets;
every .pte op runs on XNNPACK; int8 stays close; static-tile SR inference is exact."""

import numpy as np
import pytest
import torch
from conftest import randomize_bn

pytest.importorskip("onnxruntime")

from repas.deploy.bundle import export_models, max_abs_diff  # noqa: E402
from repas.deploy.runner import onnx_runner, pte_runner, upscale_array  # noqa: E402
from repas.errors import RepasError  # noqa: E402
from repas.search import extract_subnet  # noqa: E402
from repas.sr_geometry import receptive_radius, tile_windows  # noqa: E402
from repas.supernet import build, create_supernet_spec, fuse_repnet  # noqa: E402

TOL = 1e-4  # max abs difference, float32: both runtimes sum the same products in another order


def default_subnet(space: str, seed: int = 0, **shape) -> torch.nn.Module:
    """A subnet of a default search space as a search leaves it: about half of every gated
    layer's channels switched off (a different half per layer), random BN statistics, fused."""
    torch.manual_seed(seed)
    model = build(create_supernet_spec(space, **shape))
    randomize_bn(model, seed)
    gen = torch.Generator().manual_seed(seed)
    masks = [torch.rand(lay.out_channels, generator=gen) < 0.55 if lay.gated
             else torch.ones(lay.out_channels, dtype=bool) for lay in model.spec.layers]
    for m in masks:
        m[0] = True
    fused = fuse_repnet(extract_subnet(model.eval(), masks)).eval()
    # Random BN statistics blow activations up layer by layer (SR outputs reach ~600); scale
    # each fused conv so that its output has unit spread, as in a trained net, so that a
    # 1e-4 tolerance means what it means for real outputs.
    x = torch.rand(1, fused.spec.in_channels, 32, 32, generator=gen) * 3 - 1
    with torch.no_grad():
        for block in fused.blocks:
            conv = block.reparam_conv
            out = torch.nn.functional.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                                             conv.groups)
            conv.weight.div_(out.std())
            conv.bias.div_(out.std())
            x = block(x)
    return fused


SUBNETS = {"classification": ("repvgg-fmnist", {}, (1, 1, 28, 28)),
           "super-resolution": ("ecbsr-m4c32", {"in_channels": 1, "scale": 2}, (1, 1, 40, 56))}


@pytest.mark.parametrize("task", SUBNETS)
def test_onnx_equals_pytorch(task, tmp_path):
    space, shape_kw, shape = SUBNETS[task]
    model = default_subnet(space, **shape_kw)
    made = export_models(model, tmp_path, shape, ["onnx"])
    assert made["files"] == {"onnx": {"float": "model.onnx"}}
    diff = max_abs_diff(onnx_runner(tmp_path / "model.onnx"), model, shape, trials=4, seed=7)
    assert diff <= TOL


@pytest.mark.parametrize("task", SUBNETS)
def test_pte_equals_pytorch_and_runs_wholly_on_xnnpack(task, tmp_path):
    pytest.importorskip("executorch")
    space, shape_kw, shape = SUBNETS[task]
    model = default_subnet(space, **shape_kw)
    made = export_models(model, tmp_path, shape, ["pte"])
    assert made["checks"]["pte_float_non_delegated_ops"] == []
    diff = max_abs_diff(pte_runner(tmp_path / "model.pte"), model, shape, trials=4, seed=7)
    assert diff <= TOL


def test_sr_graph_has_pixel_shuffle_before_lowering_and_nothing_after():
    """The check behind the SR .pte: PixelShuffle is in the exported graph, and lowering
    leaves no op (PixelShuffle included) outside the XNNPACK delegate."""
    pytest.importorskip("executorch")
    from repas.deploy.bundle import non_delegated_ops
    from repas.deploy.executorch_export import lower_program

    model = default_subnet("ecbsr-m4c32", in_channels=1, scale=2)
    x = torch.rand(1, 1, 24, 24)
    exported = torch.export.export(model, (x,))
    assert any("pixel_shuffle" in str(n.target) for n in exported.graph.nodes)
    _, edge = lower_program(model, (x,))
    assert non_delegated_ops(edge) == []

    class WithPortableOp(torch.nn.Module):  # an op XNNPACK does not take: the check must see it
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(model(t), dim=3)

    _, edge = lower_program(WithPortableOp(), (x,))
    assert any("cumsum" in op for op in non_delegated_ops(edge))


def test_int8_models_are_close_to_float_and_delegated(tmp_path):
    pytest.importorskip("executorch")
    space, shape_kw, shape = SUBNETS["super-resolution"]
    model = default_subnet(space, **shape_kw)
    calib = [torch.rand(*shape, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    made = export_models(model, tmp_path, shape, ["onnx", "pte"], calibration=calib)
    assert made["files"]["onnx"] == {"float": "model.onnx", "int8": "model-int8.onnx"}
    assert made["checks"]["pte_int8_non_delegated_ops"] == []
    x = calib[0]
    with torch.no_grad():
        ref = model(x).numpy()
    span = ref.max() - ref.min()
    for run in (onnx_runner(tmp_path / "model-int8.onnx"), pte_runner(tmp_path / "model-int8.pte")):
        err = np.abs(run(x.numpy()) - ref)
        # int8 is not exact: its error is a few quantization steps of the output's range, not more
        assert 0 < err.max() <= 0.1 * span and err.mean() <= 0.01 * span
    assert (tmp_path / "model-int8.onnx").stat().st_size < (tmp_path / "model.onnx").stat().st_size


def test_bad_formats_and_missing_executorch_are_clear_errors(tmp_path, monkeypatch):
    model = default_subnet("repvgg-fmnist")
    with pytest.raises(RepasError, match="unknown export format tflite"):
        export_models(model, tmp_path, (1, 1, 28, 28), ["tflite"])
    monkeypatch.setitem(__import__("sys").modules, "executorch", None)  # as if not installed
    with pytest.raises(RepasError, match="ExecuTorch is not installed"):
        export_models(model, tmp_path, (1, 1, 28, 28), ["onnx", "pte"])
    assert not (tmp_path / "model.onnx").exists()  # checked before anything is written


@pytest.mark.parametrize("size,tile,overlap", [(100, 32, 5), (32, 32, 5), (33, 32, 5), (77, 40, 0), (5, 5, 2)])
def test_tile_windows_cover_every_pixel_once_away_from_window_edges(size, tile, overlap):
    covered = np.zeros(size, int)
    for start, a, b in tile_windows(size, tile, overlap):
        assert 0 <= start and start + tile <= size and start <= a < b <= start + tile
        assert a == 0 or a - start >= overlap
        assert b == size or start + tile - b >= overlap
        covered[a:b] += 1
    assert (covered == 1).all()


def test_static_tile_upscaling_equals_one_whole_image_call(tmp_path):
    """A static-shape model run window by window gives what the net gives on the whole image."""
    model = default_subnet("ecbsr-m4c16", seed=3, in_channels=1, scale=2)
    tile = (24, 32)
    export_models(model, tmp_path, (1, 1, *tile), ["onnx"])
    run = onnx_runner(tmp_path / "model.onnx")
    lr = torch.rand(1, 1, 61, 90, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = model(lr)[0].numpy()
    tiled = upscale_array(run, lr[0].numpy(), 2, tile=tile, overlap=receptive_radius(model))
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).max() <= TOL
    short = upscale_array(run, lr[0].numpy(), 2, tile=tile, overlap=receptive_radius(model) - 2)  # too little
    assert np.abs(short - whole).max() > 1e-3


QUIET_EXPORT = """
import sys
import numpy as np
import torch
from torch import nn
from repas.deploy.bundle import export_models
from repas.deploy.executorch_export import set_executorch_threads
from repas.deploy.runner import onnx_runner, pte_runner
from repas.cli.main import configure_logging
configure_logging()  # repas's progress lines, as the CLI shows them
out, shape = sys.argv[1], (1, 1, 16, 16)
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)).eval()
set_executorch_threads(1)  # as the export stage does: ExecuTorch logs its CPU probing here
export_models(net, out, shape, ["onnx", "pte"], calibration=[torch.rand(4, 1, 16, 16)])
for name in ("model.pte", "model-int8.pte"):
    pte_runner(out + "/" + name)(np.zeros(shape, np.float32))
onnx_runner(out + "/model-int8.onnx")(np.zeros(shape, np.float32))
"""


def test_a_normal_export_prints_repas_lines_only(tmp_path):
    """Float and int8, ONNX and .pte, exported and run in a fresh process with every warning
    shown (``-W always``): ExecuTorch's, torchao's, torch's and onnxruntime's notes, warnings and
    C++ log lines are silenced at their source; repas's own lines still show."""
    pytest.importorskip("executorch")
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-W", "always", "-c", QUIET_EXPORT, str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith("export: model") for line in lines), done.stdout
