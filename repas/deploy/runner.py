"""Run an exported bundle: ``repas predict BUNDLE IMAGE``, without PyTorch or training code.

A bundle is a directory with the model files and ``model.json`` (see ``repas.deploy.bundle``).
This module needs only numpy, pillow and onnxruntime (or ExecuTorch's runtime for a .pte),
so it runs in a bare environment (``pip install --no-deps repas onnxruntime numpy pillow``);
nothing here may import torch, yaml or the rest of repas beyond ``atomic``, ``colour`` and ``errors``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from repas.atomic import atomic_write_bytes
from repas.colour import rgb_to_cbcr, rgb_to_y, to_rgb_u8, ycbcr_to_rgb
from repas.errors import RepasError

MANIFEST = "model.json"
BUNDLE_FORMAT = 1
Run = Callable[[np.ndarray], np.ndarray]  # (1, C, H, W) float32 -> model output, float32
RUNTIMES = {"onnx": "onnxruntime", "pte": "executorch"}


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """The bundle's ``model.json``, checked for the fields the runner needs."""
    path = Path(bundle) / MANIFEST
    if not path.exists():
        raise RepasError(f"{bundle} is not a repas bundle: no {MANIFEST} (make one with 'repas export RUN_DIR')")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RepasError(f"{path} is not valid JSON ({e}); re-export the bundle") from None
    if manifest.get("bundle_format") != BUNDLE_FORMAT:
        raise RepasError(f"{path}: bundle_format {manifest.get('bundle_format')!r}, this repas reads "
                         f"{BUNDLE_FORMAT}; re-export the bundle with this version")
    missing = [k for k in ("task", "input", "files") if k not in manifest]
    if missing:
        raise RepasError(f"{path} lacks {', '.join(missing)}; re-export the bundle")
    return manifest


def model_file(bundle: str | Path, manifest: dict[str, Any], fmt: str, precision: str) -> Path:
    """The path of the bundle's ``fmt`` (onnx / pte) model at ``precision`` (float / int8)."""
    files = manifest["files"]
    if fmt not in files or precision not in files[fmt]:
        have = ", ".join(f"{f} {p}" for f, ps in files.items() for p in ps) or "none"
        raise RepasError(f"{bundle} has no {fmt} {precision} model (it has: {have}); export it with "
                         f"'repas export RUN_DIR --format {fmt}'" + (" --int8" if precision == "int8" else ""))
    path = Path(bundle) / files[fmt][precision]
    if not path.exists():
        raise RepasError(f"{path} is listed in {MANIFEST} but missing; re-export the bundle")
    return path


def onnx_session(model: str | Path | bytes, threads: int = 1):  # noqa: ANN201 (onnxruntime.InferenceSession)
    """An onnxruntime CPU session for a model file (or its bytes) at ``threads`` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise RepasError("running a .onnx model needs onnxruntime: pip install onnxruntime") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])


def onnx_runner(path: str | Path, threads: int = 1) -> Run:
    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]


def pte_runner(path: str | Path) -> Run:
    """A .pte program on ExecuTorch's runtime (its Python binding exchanges torch tensors)."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch
            from executorch.runtime import Runtime
    except ImportError:
        raise RepasError("running a .pte model needs ExecuTorch: pip install executorch (or use --format onnx)"
                         ) from None
    program_bytes = Path(path).read_bytes()
    method = Runtime.get().load_program(program_bytes).load_method("forward")

    def run(x: np.ndarray, _keep: bytes = program_bytes) -> np.ndarray:  # the runtime reads the bytes in place
        return method.execute([torch.from_numpy(np.ascontiguousarray(x, np.float32))])[0].numpy()

    return run


def load_runner(bundle: str | Path, fmt: str = "onnx", precision: str = "float", threads: int = 1) -> Run:
    """The bundle's model as a function on (1, C, H, W) float32 arrays of its input shape."""
    if fmt not in RUNTIMES:
        raise RepasError(f"unknown model format {fmt!r}; expected one of {', '.join(RUNTIMES)}")
    path = model_file(bundle, read_manifest(bundle), fmt, precision)
    return onnx_runner(path, threads) if fmt == "onnx" else pte_runner(path)


# ---- classification -------------------------------------------------------------------------

def classifier_input(image: Any, spec: dict[str, Any]) -> np.ndarray:  # noqa: ANN401 (PIL.Image)
    """A PIL image as the classifier's (1, C, H, W) input: colour mode, size, normalization."""
    from PIL import Image

    _, c, h, w = spec["shape"]
    image = image.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    x = np.asarray(image, np.float32).reshape(h, w, c) / 255.0
    x = (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    return x.transpose(2, 0, 1)[None]


def top_k(logits: np.ndarray, labels: list[str], k: int = 5) -> list[tuple[str, float]]:
    z = logits.reshape(-1).astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p)[:k]
    return [(labels[i] if i < len(labels) else str(i), float(p[i])) for i in order]


# ---- super-resolution -----------------------------------------------------------------------

def tile_starts(size: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """(window start, first kept, last kept + 1) along one axis, for windows of exactly
    ``tile`` pixels placed inside an image of ``size >= tile`` pixels. A kept pixel lies at
    least ``overlap`` pixels from its window's edges unless that edge is the image's, so with
    an overlap of at least the receptive radius the result equals one whole-image call."""
    step = tile - 2 * overlap
    if step < 1:
        raise RepasError(f"tile {tile} is too small for an overlap of {overlap} pixels: export with a larger tile")
    out, start, kept = [], 0, 0
    while True:
        start = min(start, size - tile)  # the last window is moved back inside the image
        end = start + tile
        keep_from = max(kept, start + overlap) if start else 0  # each pixel kept once
        keep_to = size if end >= size else end - overlap
        out.append((start, keep_from, keep_to))
        kept = keep_to
        if end >= size:
            return out
        start += step


def upscale_array(run: Run, lr: np.ndarray, scale: int, tile: tuple[int, int], overlap: int) -> np.ndarray:
    """Super-resolve a (C, H, W) float32 LR array with a model of static input ``tile`` (h, w).

    An image smaller than the tile is edge-padded to it (its outermost ``overlap`` pixels
    then differ slightly from a whole-image call); otherwise the result equals one."""
    c, h, w = lr.shape
    th, tw = tile
    ph, pw = max(th - h, 0), max(tw - w, 0)
    if ph or pw:
        lr = np.pad(lr, ((0, 0), (0, ph), (0, pw)), mode="edge")
    hh, ww = lr.shape[1:]
    out = np.zeros((c, hh * scale, ww * scale), np.float32)
    for ys, y0, y1 in tile_starts(hh, th, overlap):
        for xs, x0, x1 in tile_starts(ww, tw, overlap):
            sr = run(lr[None, :, ys:ys + th, xs:xs + tw])[0]
            out[:, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
                sr[:, (y0 - ys) * scale:(y1 - ys) * scale, (x0 - xs) * scale:(x1 - xs) * scale]
    return out[:, :h * scale, :w * scale]


def upscale_rgb(run: Run, rgb: np.ndarray, spec: dict[str, Any], scale: int) -> np.ndarray:
    """An (H, W, 3) uint8 image super-resolved: a Y model upscales BT.601 luma (chroma bicubic)."""
    from PIL import Image

    tile, overlap = tuple(spec["shape"][2:]), int(spec["overlap"])
    if spec["colour"] == "rgb":
        sr = upscale_array(run, rgb.transpose(2, 0, 1).astype(np.float32) / 255.0, scale, tile, overlap)
        return (np.clip(sr, 0, 1) * 255.0).round().astype(np.uint8).transpose(1, 2, 0)
    y = (rgb_to_y(rgb) / 255.0).astype(np.float32)[None]
    y_up = np.clip(upscale_array(run, y, scale, tile, overlap)[0], 0, 1) * 255.0
    h, w = rgb.shape[:2]
    cb, cr = (np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((w * scale, h * scale),
                                                                                 Image.BICUBIC))
              for c in rgb_to_cbcr(rgb))
    return np.clip(ycbcr_to_rgb(y_up, cb, cr) + 0.5, 0, 255).astype(np.uint8)


# ---- the command ----------------------------------------------------------------------------

def open_image(path: str | Path) -> Any:  # noqa: ANN401 (PIL.Image)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise RepasError(f"no image at {path}") from None
    except (OSError, UnidentifiedImageError) as e:
        raise RepasError(f"cannot read {path} as an image ({e})") from None


def predict(bundle: str | Path, image: str | Path, output: str | Path | None = None, fmt: str = "onnx",
            precision: str = "float", k: int = 5, threads: int = 1) -> str:
    """Run the bundle on an image: the top-k labels of a classifier, or (SR) the upscaled
    image written to ``output``. Returns the lines to print."""
    manifest = read_manifest(bundle)
    task, spec = manifest["task"], manifest["input"]
    if task == "super-resolution" and output is None:
        raise RepasError("a super-resolution bundle writes an image: give -o OUTPUT.png")
    img = open_image(image)  # before loading the model: a bad image is the cheaper error
    run = load_runner(bundle, fmt, precision, threads)
    if task == "classification":
        ranked = top_k(run(classifier_input(img, spec)), manifest.get("labels", []), k)
        return "\n".join(f"{p:7.2%}  {label}" for label, p in ranked)
    rgb, _ = to_rgb_u8(img)
    out = upscale_rgb(run, rgb, spec, int(manifest["scale"]))
    save_image(out, output)
    return f"wrote {output}: {rgb.shape[1]}x{rgb.shape[0]} -> {out.shape[1]}x{out.shape[0]} ({fmt} {precision})"


def save_image(rgb: np.ndarray, path: str | Path) -> None:
    """Write an RGB uint8 image atomically, in the format its suffix names."""
    import io

    from PIL import Image

    suffix = Path(path).suffix.lower().lstrip(".") or "png"
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF"}.get(suffix, suffix.upper())
    buf = io.BytesIO()
    try:
        Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format=fmt)
    except (KeyError, ValueError) as e:
        raise RepasError(f"cannot write {path}: unknown image format {suffix!r} ({e})") from None
    atomic_write_bytes(path, buf.getvalue())
