"""The super-resolution net (ECBSR shape): residual + PixelShuffle, cost, extraction, fusion."""

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_bn
from test_cost import counted_macs

from repas.errors import RepasError
from repas.search import extract_subnet, gated_copy, spec_cost
from repas.supernet import build, create_supernet_spec, fuse_repnet


def small_sr(scale=2, colours=1):
    return create_supernet_spec("ecbsr-m4c16", scale=scale, in_channels=colours, input_size=(10, 12))


@pytest.mark.parametrize("scale,colours", [(2, 1), (3, 3), (4, 1)])
def test_zero_body_is_nearest_neighbour_upsampling(scale, colours):
    model = build(small_sr(scale, colours)).eval()
    with torch.no_grad():
        for p in model.blocks[-1].parameters():
            p.zero_()
    x = torch.randn(2, colours, 10, 12)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, colours, 10 * scale, 12 * scale)
    assert torch.allclose(y, F.interpolate(x, scale_factor=scale, mode="nearest"), atol=1e-6)


def test_sr_macs_equal_flop_counter_and_presets_scale():
    spec = small_sr()
    assert spec_cost(spec) == counted_macs(fuse_repnet(build(spec)).eval(), spec)
    m4c16, m4c32 = (spec_cost(create_supernet_spec(n)) for n in ("ecbsr-m4c16", "ecbsr-m4c32"))
    assert 3.0 < m4c32 / m4c16 < 4.0  # body MACs grow with C^2


def test_sr_extraction_and_fusion_are_exact():
    torch.manual_seed(0)
    model = build(small_sr())
    randomize_bn(model, 2)
    masks = [torch.arange(w) % 3 != 2 if g is not None else torch.ones(w, dtype=torch.bool)
             for w, g in zip(model.spec.widths, model.gate_modules())]
    sub = extract_subnet(model.eval(), masks)
    assert sub.spec.widths[-1] == 4  # the tail's width is fixed
    x = torch.randn(2, 1, 10, 12)
    with torch.no_grad():
        ref = gated_copy(model, masks).eval()(x)
        scale = float(ref.abs().max())
        assert float((sub(x) - ref).abs().max()) <= 1e-5 * scale
        assert float((fuse_repnet(sub)(x) - ref).abs().max()) <= 1e-5 * scale


def test_bad_sr_scale_is_a_clear_error():
    with pytest.raises(RepasError, match="scale must be one of"):
        create_supernet_spec("ecbsr-m4c16", scale=5)
