"""Coverage of repas's any-CNN path, measured beside Torch-Pruning on the same models.

Every classification builder in ``torchvision.models`` (and, with ``--timm``, one small
model of each of many timm CNN families) is built with random weights and random BatchNorm
statistics, at a small input, and put through:

- ``GatedModel`` (the channel groups of Torch-Pruning's dependency graph, one gate each);
- extraction at 0.5x MACs with ``uniform`` (the default method, SearchConfig.method) and
  with ``l1-layer`` (the channels of largest L1 norm rather than the first ones);
- output equality of each extracted model with the gated one (relative error <= 1e-4);
- its MACs against ``torch.utils.flop_counter`` (FLOPs / 2; within 1%);
- ``save_pruned`` / ``load_pruned`` (the loaded model equals the saved one);
- the fused ONNX export (``fuse_user_model`` + ``repas.deploy.export_models``, checked in onnxruntime);

and, on a fresh copy of the same model, Torch-Pruning's ``MetaPruner`` with magnitude
importance at channel ratio 1 - sqrt(0.5) (about 0.5x MACs on a conv net), which must run
and leave a model that still forwards.

Each model runs in its own subprocess with a time limit, so one hang or crash cannot stop
the walk; the results are rewritten atomically after each model, and a rerun skips the
models already done (``--redo`` runs them again).

    python scripts/coverage_models.py            # torchvision
    python scripts/coverage_models.py --timm     # torchvision, then timm
    python scripts/coverage_models.py --only resnext50_32x4d shufflenet_v2_x0_5 --redo
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from coverage_table import versions, write_table  # noqa: E402

TARGET = 0.5                       # fraction of the dense MACs
TP_RATIO = 1 - math.sqrt(TARGET)   # Torch-Pruning's channel ratio for about that fraction
METHODS = ("uniform", "l1-layer")  # the default method, and one that keeps the largest-norm channels
MAX_REL_ERR = 1e-4
MAX_MACS_ERR = 0.01
CHECKS = {"target": TARGET, "methods": METHODS, "tp_ratio": TP_RATIO, "max_rel_err": MAX_REL_ERR,
          "max_macs_err": MAX_MACS_ERR}

# one small model per timm CNN family
TIMM = ["resnet10t", "resnext26ts", "seresnext26d_32x4d", "regnetx_002", "regnety_002", "mobilenetv3_small_050",
        "mobilenetv2_050", "efficientnet_lite0", "mnasnet_small", "ghostnet_050", "rexnet_100", "dla46_c",
        "dpn48b", "densenet121", "cs3darknet_s", "hrnet_w18_small", "repvgg_a0", "mobileone_s0", "fbnetc_100",
        "lcnet_050", "tinynet_e", "resnest14d", "selecsls42b", "ese_vovnet19b_slim", "gernet_s", "skresnet18",
        "res2net50_14w_8s", "vgg11", "mixnet_s", "spnasnet_100", "tf_efficientnetv2_b0", "darknet17",
        "resnetv2_50", "hgnetv2_b0", "repghostnet_050", "mobilenetv4_conv_small", "xception41",
        "convnext_atto"]

# builder arguments beyond weights=None: as in Torch-Pruning's torchvision benchmark
KWARGS = {"googlenet": {"aux_logits": False, "init_weights": True},
          "inception_v3": {"aux_logits": False, "init_weights": True},
          "vit_b_16": {"image_size": 64}, "vit_b_32": {"image_size": 64}, "vit_l_16": {"image_size": 64},
          "vit_l_32": {"image_size": 64}, "vit_h_14": {"image_size": 56}}
SIZES = {"inception_v3": 96, "maxvit_t": 224, "vit_h_14": 56}  # the input side where 64 does not work
FALLBACK_SIZES = (64, 96, 128, 160, 224)


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:400]}"


# ---- one model, in a worker process -------------------------------------------------------

def build(source: str, name: str):
    """The model (eval, random BN statistics), the builder and kwargs for ``load_pruned``."""
    import torch

    torch.manual_seed(0)
    if source == "torchvision":
        import torchvision

        kwargs = dict(KWARGS.get(name, {}))
        model = getattr(torchvision.models, name)(weights=None, **kwargs)
        builder = f"torchvision.models:{name}"
    else:
        import timm

        kwargs = {"model_name": name, "pretrained": False}
        model = timm.create_model(**kwargs)
        builder = "timm:create_model"
    randomize_bn(model)
    return model.eval(), builder, kwargs


def randomize_bn(model) -> None:
    """Random running statistics and affine parameters in every BatchNorm (a fresh one is an
    identity, which would hide a wrong cut), and layer scales of about 1 (initialised at
    1e-6, they would hide every block's contribution)."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] in ("layer_scale", "gamma"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.1)
                if m.affine:
                    m.weight.copy_(torch.randn(n, generator=gen))
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.5)


def input_for(model, name: str):
    """The smallest input among FALLBACK_SIZES (or SIZES[name]) the dense model forwards."""
    import torch

    sizes = [SIZES[name]] if name in SIZES else list(FALLBACK_SIZES)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    fixed = cfg.get("fixed_input_size") and cfg.get("input_size")
    if fixed:
        sizes = [fixed[-1]]
    error = None
    for side in sizes:
        x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
        try:
            with torch.no_grad():
                model(x[:1])
            return x
        except Exception as e:  # noqa: BLE001 (too small: try the next size)
            error = e
    raise RuntimeError(f"the dense model does not forward at {sizes}: {one_line(error)}")


def flop_macs(model, x) -> float:
    """torch's flop counter / 2, attention computed by its plain matmuls (the counter does not
    see inside the fused kernels of a CPU: it would count no attention at all)."""
    from repas.graph.cost import counted_macs

    return counted_macs(model, x)


def rel_err(a, b) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def output_layers(model, num_classes: int) -> list:
    from torch import nn

    return [m for m in model.modules() if (isinstance(m, nn.Linear) and m.out_features == num_classes)
            or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)]


def run_repas(source: str, name: str, out: dict) -> None:
    import torch

    from repas.graph import GatedModel, fuse_user_model, load_pruned, save_pruned
    from repas.search import create_method

    t0 = time.perf_counter()
    step = "build"
    try:
        model, builder, kwargs = build(source, name)
        x = input_for(model, name)
        out["input"] = list(x.shape[1:])
        out["params"] = sum(p.numel() for p in model.parameters())
        x1 = x[:1]
        out["dense_macs"] = flop_macs(model, x1)
        step = "gate"
        g = GatedModel(model, x1)
        dense = float(g.cost("macs", g.spec.widths))
        out["groups"] = len(g.groups)
        out["dense_macs_ratio"] = dense / out["dense_macs"]
        if abs(dense / out["dense_macs"] - 1) > MAX_MACS_ERR:
            raise AssertionError(f"dense MACs {dense:.4g} vs flop counter {out['dense_macs']:.4g}")
        for method in METHODS:
            step = method
            t = time.perf_counter()
            m = create_method(method, g, target=TARGET)
            sub = m.extract().eval()
            widths = [int(k.sum()) for k in g.masks()]
            analytic = float(g.cost("macs", widths))
            g.eval()
            with torch.no_grad():
                err = rel_err(g(x), sub(x))
            counted = flop_macs(sub, x1)
            row = {"rel_err": err, "macs_ratio": analytic / counted, "macs_fraction": counted / out["dense_macs"],
                   "seconds": round(time.perf_counter() - t, 2)}
            out[method] = row
            if not err <= MAX_REL_ERR:
                raise AssertionError(f"extracted model differs from the gated one: relative error {err:.2e}")
            if abs(analytic / counted - 1) > MAX_MACS_ERR:
                raise AssertionError(f"MACs {analytic:.4g} vs flop counter {counted:.4g}")
            if method == METHODS[0]:
                with tempfile.TemporaryDirectory() as tmp:
                    step = "save_pruned/load_pruned"
                    save_pruned(sub, Path(tmp) / "pruned", g, builder=builder, kwargs=kwargs)
                    loaded = load_pruned(Path(tmp) / "pruned")
                    with torch.no_grad():
                        err_load = rel_err(sub(x), loaded(x))
                    out["load_rel_err"] = err_load
                    if not err_load <= 1e-6:
                        raise AssertionError(f"the loaded model differs from the saved one ({err_load:.2e})")
                    step = "onnx"
                    from repas.deploy import export_models

                    fused = fuse_user_model(sub)
                    with torch.no_grad():
                        ref = sub(x1)
                        out["fuse_rel_err"] = rel_err(ref, fused(x1))
                    tolerance = 1e-4 * max(1.0, float(ref.abs().max()))
                    result = export_models(fused, Path(tmp) / "onnx", tuple(x1.shape), ["onnx"], tolerance=tolerance)
                    out["onnx_max_abs_diff"] = result["checks"]["onnx_float_max_abs_diff"]
        out["repas"] = "ok"
    except Exception as e:  # noqa: BLE001 (the table records any failure, in one line)
        from repas.errors import RepasError

        out["repas"] = f"{step}: {one_line(e)}"
        out["repas_clean"] = isinstance(e, RepasError)  # one line, as a user sees it
        out["repas_traceback"] = traceback.format_exc()[-3000:]
    out["repas_seconds"] = round(time.perf_counter() - t0, 2)


def run_tp(source: str, name: str, out: dict) -> None:
    import torch
    import torch_pruning as tp
    from torch import nn

    t0 = time.perf_counter()
    try:
        model, _, _ = build(source, name)
        x = input_for(model, name)
        x1 = x[:1]
        with torch.no_grad():
            dense_out = model(x)
        dense = flop_macs(model, x1)
        num_classes = int(dense_out.shape[-1])
        num_heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
        round_to = next(iter(num_heads.values())) if num_heads else None
        pruner = tp.pruner.MetaPruner(model, x1, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=TP_RATIO, ignored_layers=output_layers(model, num_classes),
                                      num_heads=num_heads, round_to=round_to)
        pruner.step()
        if hasattr(model, "conv_proj") and hasattr(model, "hidden_dim"):  # torchvision ViT, as TP's benchmark does
            model.hidden_dim = model.conv_proj.out_channels
        with torch.no_grad():
            y = model.eval()(x)
        if tuple(y.shape) != tuple(dense_out.shape) or not bool(torch.isfinite(y).all()):
            raise AssertionError(f"the pruned model outputs {tuple(y.shape)} (dense {tuple(dense_out.shape)})")
        out["tp_macs_fraction"] = flop_macs(model, x1) / dense
        out["tp"] = "ok"
    except Exception as e:  # noqa: BLE001
        out["tp"] = one_line(e)
    out["tp_seconds"] = round(time.perf_counter() - t0, 2)


def worker(key: str, part: str, path: str, memory_gb: float) -> None:
    import resource

    limit = int(memory_gb * 2**30)  # a model that blows up fails alone, not the machine
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    torch.set_num_threads(1)
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    source, name = key.split(":", 1)
    out: dict = {}
    for which, run in (("repas", run_repas), ("tp", run_tp)):
        if part in (which, "both"):
            run(source, name, out)
            Path(path).write_text(json.dumps(out))  # what is done survives a crash or time-out in the rest


# ---- the walk ------------------------------------------------------------------------------

def model_list(with_timm: bool) -> list[str]:
    import torchvision

    keys = [f"torchvision:{n}" for n in torchvision.models.list_models(module=torchvision.models)]
    if with_timm:
        keys += [f"timm:{n}" for n in TIMM]
    return keys


def run_part(key: str, part: str, timeout: float, memory_gb: float) -> tuple[dict, str]:
    """``part`` (repas, tp or both) of model ``key`` in a subprocess, within ``timeout``:
    what it wrote, and how it ended."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "result.json"
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", MKL_NUM_THREADS="1")
        try:
            proc = subprocess.run([sys.executable, __file__, "--worker", key, "--part", part, "--result", str(path),
                                   "--memory-gb", str(memory_gb)],
                                  env=env, timeout=timeout, capture_output=True, text=True)
            tail = (proc.stderr or "").strip().splitlines()[-1:] if proc.returncode else []
            status = f"worker exit {proc.returncode}" + (f": {tail[0][:300]}" if tail else "")
        except subprocess.TimeoutExpired:
            status = f"timed out after {timeout:.0f} s (one thread)"
        return (json.loads(path.read_text()) if path.exists() else {}), status


def run_one(key: str, timeout: float, memory_gb: float) -> dict:
    """repas, then Torch-Pruning, in one subprocess (one time limit for both); Torch-Pruning
    in a fresh one if the first ended before repas was done."""
    source, name = key.split(":", 1)
    out = {"model": name, "source": source}
    t0 = time.perf_counter()
    data, status = run_part(key, "both", timeout, memory_gb)
    out.update(data)
    if "repas" not in out:  # Torch-Pruning never ran: it gets a process of its own
        out["repas"] = status
        data, status = run_part(key, "tp", timeout, memory_gb)
        out.update(data)
    out.setdefault("tp", status)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def by_size(keys: list[str]) -> list[str]:
    """Smallest models first (parameters counted on the meta device, nothing allocated), so
    that a walk cut short has covered the most models."""
    import torch

    def params(key: str) -> float:
        source, name = key.split(":", 1)
        try:
            with torch.device("meta"):
                if source == "torchvision":
                    import torchvision

                    model = getattr(torchvision.models, name)(weights=None, **KWARGS.get(name, {}))
                else:
                    import timm

                    model = timm.create_model(name, pretrained=False)
            return sum(p.numel() for p in model.parameters())
        except Exception:  # noqa: BLE001 (the walk will say why)
            return float("inf")
    return sorted(keys, key=params)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--timm", action="store_true", help="also one small model of each timm CNN family")
    p.add_argument("--only", nargs="*", help="these models only (names, or source:name)")
    p.add_argument("--redo", action="store_true", help="run models already in the table again")
    p.add_argument("--skip", nargs="*", default=[], help="leave these models for a later run")
    p.add_argument("--timeout", type=float, default=900, help="seconds a model may take (default 900)")
    p.add_argument("--out", default=str(ROOT / "docs" / "coverage_torchvision"), help="table path, no suffix")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--memory-gb", type=float, default=12, help="address space a model may use (default 12 GiB)")
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.part, args.result, args.memory_gb)
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from repas.deploy import cpu_name

    out = Path(args.out)
    existing = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    results: dict = existing.get("models", {})
    keys = model_list(args.timm or any(k.startswith("timm:") for k in args.only or []))
    if args.only:
        keys = [k for k in keys if k in args.only or k.split(":", 1)[1] in args.only]
    keys = [k for k in keys if k not in args.skip and k.split(":", 1)[1] not in args.skip]
    keys = by_size([k for k in keys if args.redo or k not in results])
    meta = {"date": datetime.date.today().isoformat(), "cpu": cpu_name(), "python": platform.python_version(),
            "versions": versions(),
            "command": "OMP_WAIT_POLICY=PASSIVE python " + " ".join(["scripts/coverage_models.py", *sys.argv[1:]])}
    if existing.get("meta", {}).get("command") and args.only:
        meta["command"] = existing["meta"]["command"] + f"  (then: {meta['command']})"
    for i, key in enumerate(keys, 1):
        r = run_one(key, args.timeout, args.memory_gb)
        results[key] = r
        print(f"[{i}/{len(keys)}] {key}: repas {r['repas'][:150]} | TP {r['tp'][:100]} ({r['seconds']} s)",
              flush=True)
        write_table(results, meta, out, CHECKS)
    write_table(results, meta, out, CHECKS)


if __name__ == "__main__":
    main()
