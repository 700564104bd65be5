"""Write a deployment bundle: the fused net as .onnx and .pte files, float and int8, each
checked against PyTorch, and ``model.json`` describing how to feed it.

Layout of a bundle directory::

    model.onnx  model-int8.onnx     onnxruntime, static input shape
    model.pte   model-int8.pte      ExecuTorch, every op delegated to XNNPACK
    model.json                      task, input (shape, colour, normalization), labels / scale,
                                    widths, MACs, params, files, checks, metrics, latency per runtime,
                                    sha256 (of each model file)

``model.json`` records the SHA-256 of every model file, which ``repas.deploy.runner``
(``repas predict``, without PyTorch) checks before running one. A bundle is written whole or
not at all (``repas.atomic.staged_directory``).
"""

from __future__ import annotations

import copy
import datetime
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from repas.atomic import atomic_write_bytes, atomic_write_json, staged_directory
from repas.deploy.onnx_export import export_onnx
from repas.deploy.runner import BUNDLE_FORMAT, MANIFEST, RUNTIMES, Run, file_sha256, onnx_runner, pte_runner
from repas.errors import RepasError

FORMATS = tuple(RUNTIMES)  # onnx, pte
FILES = {("onnx", "float"): "model.onnx", ("onnx", "int8"): "model-int8.onnx",
         ("pte", "float"): "model.pte", ("pte", "int8"): "model-int8.pte"}
log = logging.getLogger(__name__)


def non_delegated_ops(edge: Any) -> list[str]:  # noqa: ANN401 (executorch EdgeProgramManager)
    """The ops of a lowered program left to ExecuTorch's portable kernels (not XNNPACK)."""
    graph = edge.exported_program().graph_module.graph
    return sorted({str(n.target) for n in graph.nodes if n.op == "call_function"
                   and "executorch_call_delegate" not in str(n.target) and "getitem" not in str(n.target)})


# what a user can do about an op XNNPACK did not take, by a fragment of its name
_OP_ADVICE = {"_to_dim_order_copy": "a memory-format copy (.contiguous() or .to(memory_format=...) in forward)",
              "alloc": "a buffer the partitioner allocates around an op it did not take",
              "upsample_nearest": "nearest upsampling (nn.Upsample / F.interpolate, mode='nearest')",
              "upsample_bilinear": "bilinear upsampling",
              "repeat": "Tensor.repeat (write it as a fixed 1x1 conv or a concatenation)",
              "max_pool2d_with_indices": "max pooling that returns indices"}


def describe_ops(ops: Sequence[str]) -> str:
    """The ops left outside XNNPACK, each with what it is in a model's source where known."""
    out = []
    for op in ops:
        name = op.split(" at 0x")[0].replace("<function ", "").rstrip(">")
        hint = next((v for k, v in _OP_ADVICE.items() if k in name), None)
        out.append(f"{name} ({hint})" if hint else name)
    return "; ".join(out)


def max_abs_diff(run: Run, model: nn.Module, shape: tuple[int, ...], *, trials: int = 3, seed: int = 0) -> float:
    """Largest |run(x) - model(x)| over random inputs of ``shape`` (inputs in [-1, 2] cover
    normalized images and [0, 1] pixels alike)."""
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    with torch.no_grad():
        for _ in range(trials):
            x = torch.rand(*shape, generator=gen) * 3 - 1
            worst = max(worst, float(np.abs(run(x.numpy()) - model(x).numpy()).max()))
    return worst


def _output_spread(model: nn.Module, shape: tuple[int, ...], *, seed: int = 0) -> float:
    """Largest |model(x)| over an input of ``shape`` drawn as ``max_abs_diff`` draws them."""
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 3 - 1
    with torch.no_grad():
        return float(model(x).abs().max())


def export_models(model: nn.Module, out: str | Path, shape: tuple[int, ...], formats: Sequence[str], *,
                  calibration: list[torch.Tensor] | None = None, tolerance: float = 1e-4,
                  observer: str = "histogram", qat: nn.Module | None = None,
                  float_layers: Sequence[str] = ()) -> dict[str, Any]:
    """Write ``model`` (fused, eval) at static input ``shape`` in each format: see
    ``_export_models``. A failure (a check, an op XNNPACK does not take, Ctrl-C) removes the
    model files this call had written, so ``out`` never holds half a set."""
    out = Path(out)
    had = {name for name in FILES.values() if (out / name).exists()}
    try:
        return _export_models(model, out, shape, formats, calibration=calibration, tolerance=tolerance,
                              observer=observer, qat=qat, float_layers=float_layers)
    except BaseException:
        for name in set(FILES.values()) - had:
            (out / name).unlink(missing_ok=True)
        raise


def _export_models(model: nn.Module, out: Path, shape: tuple[int, ...], formats: Sequence[str], *,
                   calibration: list[torch.Tensor] | None, tolerance: float, observer: str,
                   qat: nn.Module | None, float_layers: Sequence[str]) -> dict[str, Any]:
    """Write ``model`` (fused, eval) at static input ``shape`` in each format, float and (with
    ``calibration`` inputs) int8. Every float file must equal PyTorch within ``tolerance``
    (max abs difference), and every .pte must run wholly on XNNPACK; either failure is a
    RepasError. Returns {"files": {fmt: {precision: name}}, "checks": {...}}.

    int8 is post-training, activations calibrated by ``observer`` (``repas.deploy.qat``),
    unless ``qat`` is given (the converted QAT graph, ``repas.deploy.qat.convert_qat``): the
    int8 .pte and .onnx are then that graph, with the quantization parameters training ended
    with (no calibration; the .onnx is checked against PyTorch's int8 reference).
    ``float_layers`` stay float in the int8 .pte and .onnx (mixed precision): in the post-training
    .pte, or, with ``qat``, the caller's QAT graph must have been trained with them float."""
    from repas.deploy.executorch_export import executorch_version, lower_program
    from repas.deploy.qat import DEFAULT_OBSERVER, quantize_ptq
    from repas.deploy.quantize import quantize_onnx, quantize_pt2e

    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise RepasError(f"unknown export format {', '.join(unknown) or '(none)'}; expected some of "
                         f"{', '.join(FORMATS)}")
    if "pte" in formats:
        executorch_version()  # a clear error before anything is written
    out = Path(out)
    # a model trained channels_last has NHWC weights; XNNPACK's lowering asserts NCHW ones
    model = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(*shape)
    files: dict[str, dict[str, str]] = {}
    checks: dict[str, Any] = {}

    def add(fmt: str, precision: str) -> Path:
        files.setdefault(fmt, {})[precision] = FILES[fmt, precision]
        return out / FILES[fmt, precision]

    if "onnx" in formats:
        path = export_onnx(model, shape, add("onnx", "float"))
        diff = max_abs_diff(onnx_runner(path), model, shape)
        checks["onnx_float_max_abs_diff"] = diff
        if diff > tolerance:
            raise RepasError(f"onnxruntime output differs from PyTorch by {diff:.2e} (> {tolerance:g}): please report")
        log.info(f"export: {path.name}, |onnxruntime - torch| = {diff:.1e}")
        if qat is not None:  # the QAT net itself: its quantize / dequantize pairs become QDQ nodes
            int8_path = export_onnx(qat, shape, add("onnx", "int8"))
            diff = max_abs_diff(onnx_runner(int8_path), qat, shape)
            checks["onnx_int8_max_abs_diff_vs_torch_int8"] = diff
            spread = _output_spread(qat, shape)
            # onnxruntime's int8 kernels round like PyTorch's reference within a few output steps
            if diff > 0.05 * spread:
                raise RepasError(f"the int8 .onnx differs from PyTorch's int8 reference of the QAT net by {diff:.2e} "
                                 f"(> 5% of its output range {spread:.2e}): please report")
            log.info(f"export: {int8_path.name} (the QAT net, |onnxruntime - torch int8| = {diff:.1e})")
        elif calibration:
            quantize_onnx(path, add("onnx", "int8"), calibration, keep_float=float_layers)
            log.info(f"export: {FILES['onnx', 'int8']} (int8, {sum(len(x) for x in calibration)} "
                     "calibration inputs)")
    if "pte" in formats:
        from repas.deploy.xnnpack_rewrites import rewrite_for_xnnpack

        checks["executorch"] = executorch_version()
        reference = model  # every float file is checked against the net as given
        model, checks["pte_rewritten_modules"] = rewrite_for_xnnpack(model, example)
        variants = [("float", model)]
        if qat is not None:
            variants.append(("int8", qat))
            if float_layers:
                checks["pte_int8_float_layers"] = list(float_layers)
        elif calibration and float_layers:
            from repas.deploy.mixed_precision import quantize_layers

            variants.append(("int8", quantize_layers(model, example, calibration, keep_float=float_layers,
                                                     observer=observer)))
            checks["pte_int8_float_layers"] = list(float_layers)
        elif calibration:
            variants.append(("int8", quantize_pt2e(model, example, calibration) if observer == DEFAULT_OBSERVER
                             else quantize_ptq(model, example, calibration, observer)))
        if len(variants) > 1:  # what the int8 .pte runs each layer in (repas info and report.md show it)
            from repas.deploy.mixed_precision import quantizable_layers

            kept = set(float_layers)  # (QAT's graph was trained with them float)
            checks["pte_int8_layer_precision"] = {n: "float" if n in kept else "int8"
                                                  for n in quantizable_layers(model)}
        for precision, m in variants:
            program, edge = lower_program(m, (example,))
            left = non_delegated_ops(edge)
            checks[f"pte_{precision}_non_delegated_ops"] = left
            if left:
                raise RepasError(f"the {precision} .pte leaves ops outside XNNPACK: {describe_ops(left)}; they "
                                 "would run on slow portable kernels on a phone: rewrite them in the model, or "
                                 "export ONNX alone (formats ['onnx'])")
            path = add("pte", precision)
            atomic_write_bytes(path, program)
            if precision == "float":
                diff = max_abs_diff(pte_runner(path), reference, shape)
                checks["pte_float_max_abs_diff"] = diff
                if diff > tolerance:
                    raise RepasError(f"ExecuTorch output differs from PyTorch by {diff:.2e} (> {tolerance:g}): "
                                     "please report")
                log.info(f"export: {path.name}, fully delegated to XNNPACK, |executorch - torch| = {diff:.1e}")
            else:
                log.info(f"export: {path.name} (int8 PT2E, {'QAT' if qat is not None else observer}), fully "
                         "delegated to XNNPACK")
    return {"files": files, "checks": checks}


def write_manifest(out: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``model.json``: ``manifest`` plus the bundle format, repas version and date, and
    under ``sha256`` the hash of each model file that ``manifest["files"]`` lists and ``out``
    holds now (``repas predict`` refuses a file that no longer matches its hash)."""
    from repas import __version__

    out = Path(out)
    names = sorted({name for per_format in manifest.get("files", {}).values() for name in per_format.values()})
    hashes = {name: file_sha256(out / name) for name in names if (out / name).is_file()}
    head = {"bundle_format": BUNDLE_FORMAT, "repas_version": __version__,
            "created": datetime.datetime.now().isoformat(timespec="seconds")}
    path = out / MANIFEST
    atomic_write_json(path, {**head, **manifest, "sha256": hashes})
    return path




def export_bundle(model: nn.Module, out: str | Path, input_shape: Sequence[int], *, task: str = "classification",
                  labels: Sequence[str] | None = None, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
                  scale: int = 1, colour: str = "y", formats: Sequence[str] = ("onnx",),
                  calibration: list[torch.Tensor] | None = None, name: str | None = None) -> Path:
    """A whole bundle from Python, as ``repas export`` writes one: ``model`` (fused, eval;
    fuse it first with ``repas.fuse``) as .onnx / .pte files, each checked against PyTorch
    (and, with ``calibration`` inputs, int8 ones), and ``model.json`` with how an image
    becomes the input, the labels and every file's SHA-256, so that ``repas predict`` (or
    ``repas.load_runner``) runs it. Written whole or not at all.

    Classification: an input pixel is ``(p / 255 - mean) / std`` per channel; ``labels``
    name the outputs (default "0", "1", ...). Super-resolution and denoising
    (``task``): a ``colour`` ("y" or "rgb") image in [0, 1], upscaled ``scale`` x.::

        repas.export_bundle(repas.fuse(net), "bundle/", (1, 1, 28, 28), labels=classes,
                            mean=[0.286], std=[0.353])
    """
    from repas.deploy.runner import TASKS, read_manifest

    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 4 or shape[0] != 1:
        raise RepasError(f"input_shape {list(shape)}: a bundle takes one image, [1, C, H, W]")
    if task not in TASKS:
        raise RepasError(f"task {task!r}: one of {', '.join(TASKS)}")
    model = model.eval()
    if task == "classification":
        with torch.no_grad():
            outputs = int(model(torch.zeros(shape)).reshape(-1).numel())
        labels = [str(i) for i in range(outputs)] if labels is None else [str(x) for x in labels]
        if len(labels) != outputs:
            raise RepasError(f"{len(labels)} labels for a model with {outputs} outputs: give one label per output")
        head = {"input": {"shape": list(shape), "colour": "grayscale" if shape[1] == 1 else "rgb",
                          "pixel_scale": 1 / 255, "mean": [float(v) for v in mean], "std": [float(v) for v in std]},
                "labels": labels, "output": "logits, one per label (softmax for probabilities)"}
    else:
        head = {"input": {"shape": list(shape), "colour": colour, "pixel_scale": 1 / 255, "overlap": 0},
                "scale": int(scale), "output": "image in [0, 1], scale x the input's height and width"}
    params = float(sum(p.numel() for p in model.parameters()))
    with staged_directory(out) as staging:
        made = export_models(model, staging, shape, list(formats), calibration=calibration)
        write_manifest(staging, {"task": task, "name": name or type(model).__name__, **head, "params": params,
                                 "files": made["files"], "checks": made["checks"]})
        read_manifest(staging)  # what predict will check, checked now: a bad argument fails before out changes
    return Path(out)
