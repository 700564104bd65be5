"""``repas info``: per-layer widths, MACs and params of a search space, a spec, a model
directory (for a searched supernet, the widths its gates keep), a pruned user model
(``pruned.json``: its channel groups) or a run directory."""

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


def pruned_info(path: Path, *, trust_builder: bool = False) -> None:
    """A pruned user model: its builder, input, channel groups (kept of dense), MACs and params."""
    import torch

    from repas.graph.cost import counted_macs
    from repas.graph.files import load_pruned, read_pruned_record

    record = read_pruned_record(path)
    model = load_pruned(path, trust_builder=trust_builder)
    macs = counted_macs(model, torch.zeros(record["input_shape"]))
    kwargs = ", ".join(f"{k}={v!r}" for k, v in record["kwargs"].items())
    print(f"{record['builder']}({kwargs}), pruned: {record['task']}, input {'x'.join(map(str, record['input_shape']))}")
    print(f"{'group':>5} {'kept':>11}  root")
    for i, g in enumerate(record["groups"]):
        kept = f"{len(g['keep'])}/{g['size']}"
        print(f"{i:>5} {kept:>11}  {g['root']}")
    params = sum(p.numel() for p in model.parameters())
    print(f"total: {macs:,.0f} MACs, {params:,.0f} params")


def info(target: str, *, trust_builder: bool = False) -> None:
    from repas.search.cost import layer_costs
    from repas.spec import ArchSpec
    from repas.supernet import create_supernet_spec, gate_widths, load_model

    path = Path(target)
    widths, where = None, ""
    pruned = path / "pruned.json" if (path / "pruned.json").exists() else path / "pruned" / "pruned.json"
    if path.is_dir() and pruned.exists():  # a pruned user model, or the run that made it
        if (path / "report.md").exists():
            print(f"report: {path / 'report.md'}")
        return pruned_info(pruned.parent, trust_builder=trust_builder)
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
    if (path / "model.json").exists():
        bundle_info(path)


def bundle_info(path: Path) -> None:
    """A bundle's files, what its int8 .pte runs each layer in, its scores and latencies, and
    the precision it recommends per runtime."""
    from repas.deploy.runner import read_manifest

    m = read_manifest(path)
    files = ", ".join(f"{fmt} {p}: {name}" for fmt, ps in m["files"].items() for p, name in ps.items())
    print(f"bundle {path}: {files}")
    layers = m.get("checks", {}).get("pte_int8_layer_precision")
    if layers:
        kept = [n for n, p in layers.items() if p == "float"]
        print(f"int8 .pte precision per layer: {', '.join(f'{n} {p}' for n, p in layers.items())}"
              + (f" (float: {', '.join(kept)})" if kept else " (every layer int8)"))
    for key, metrics in (m.get("metrics") or {}).items():
        fmt, precision = key.split()
        runtime = {"onnx": "onnxruntime", "pte": "executorch"}.get(fmt, fmt)
        ms = (m.get("latency_ms") or {}).get(runtime, {}).get(precision)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        print(f"  {key}: {shown}" + (f", {ms:.3f} ms" if ms is not None else ""))
    if m.get("recommended_precision"):
        print("recommended: " + ", ".join(f"{r} {p}" for r, p in m["recommended_precision"].items()))
