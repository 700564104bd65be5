"""``repas info``: per-layer widths, MACs and params of a search space, a spec, a model
directory (for a searched supernet, the widths its gates keep) or a run directory."""

from __future__ import annotations

from pathlib import Path

from repas.errors import RepasError

STAGE_ORDER = ("fuse", "finetune", "extract", "search", "train")


def model_dir(path: Path) -> Path:
    """A model directory, or the best one inside a run directory (fused first)."""
    if (path / "spec.json").exists() and (path / "weights.safetensors").exists():
        return path
    for stage in STAGE_ORDER:
        if (path / stage / "weights.safetensors").exists():
            return path / stage
    raise RepasError(f"{path} holds no model: expected spec.json + weights.safetensors, or a run directory")


def info(target: str) -> None:
    from repas.search.cost import layer_costs
    from repas.spec import ArchSpec
    from repas.supernet import create_supernet_spec, gate_widths, load_model

    path = Path(target)
    widths, where = None, ""
    if path.is_dir() and not (path / "spec.json").exists():  # a run directory
        path = model_dir(path)
        where = f" ({path.name} stage of {path.parent})"
        if (path.parent / "report.md").exists():
            print(f"report: {path.parent / 'report.md'}")
    if path.exists():
        spec = ArchSpec.load(path)
        if (path / "weights.safetensors").exists() and any(lay.gated for lay in spec.layers):
            widths = gate_widths(load_model(path))  # a searched supernet: what its gates keep
    elif path.suffix or "/" in target:
        raise RepasError(f"{target} does not exist: give a search space name (repas info repvgg-fmnist), a "
                         "spec.json, a model directory or a run directory")
    else:
        spec = create_supernet_spec(target)
    widths = widths or spec.widths
    sizes = spec.feature_sizes()
    what = f"x{spec.scale}" if spec.task == "super-resolution" else f"{spec.num_classes} classes"
    print(f"{spec.name}{where}: {spec.task}, input {spec.in_channels}x{spec.input_size[0]}x{spec.input_size[1]}, "
          f"{what}" + ("; widths are those its gates keep" if widths != spec.widths else ""))
    macs, params = layer_costs(spec, widths, "macs"), layer_costs(spec, widths, "params")
    print(f"{'layer':>5} {'in':>5} {'out':>5} {'k':>2} {'s':>2} {'g':>3} {'size':>7} {'gated':>5} {'MACs':>12} "
          f"{'params':>10}  branches")
    c_in = spec.in_channels
    for i, (lay, w) in enumerate(zip(spec.layers, widths)):
        h, wd = sizes[i]
        out = f"{w}/{lay.out_channels}" if w != lay.out_channels else str(w)
        print(f"{i:>5} {c_in:>5} {out:>5} {lay.kernel:>2} {lay.stride:>2} {lay.groups:>3} {f'{h}x{wd}':>7} "
              f"{'yes' if lay.gated else 'no':>5} {macs[i]:>12,.0f} {params[i]:>10,.0f}  {','.join(lay.branches)}")
        c_in = w
    if spec.task == "super-resolution":
        h, wd = spec.input_size
        print(f"{'tail':>5} {spec.in_channels:>5} {c_in:>5} {1:>2} {1:>2} {1:>3} {f'{h}x{wd}':>7} {'no':>5} "
              f"{macs[-1]:>12,.0f} {params[-1]:>10,.0f}  residual (fixed 1x1) + PixelShuffle(x{spec.scale})")
    else:
        print(f"{'head':>5} {c_in:>5} {spec.num_classes:>5} {'':>2} {'':>2} {'':>3} {'1x1':>7} {'no':>5} "
              f"{macs[-1]:>12,.0f} {params[-1]:>10,.0f}  linear")
    print(f"total: {float(sum(macs)):,.0f} MACs, {float(sum(params)):,.0f} params")
