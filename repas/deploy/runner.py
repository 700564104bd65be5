"""Run an exported bundle: ``repas predict BUNDLE IMAGE``, without PyTorch or training code.

A bundle is a directory with the model files and ``model.json`` (see ``repas.deploy.bundle``).
This module needs only numpy, pillow and onnxruntime (or ExecuTorch's runtime for a .pte),
so it runs in a bare environment (``pip install --no-deps repas onnxruntime numpy pillow``);
nothing here may import torch, yaml or the rest of repas beyond ``atomic``, ``colour``,
``errors``, ``json_files``, ``sr_geometry`` and ``deploy.quiet``.

Every model file is checked against the SHA-256 that ``model.json`` records for it before it
runs, and a file a runtime cannot load is one clear error, not the runtime's traceback.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from repas.atomic import atomic_write_bytes
from repas.colour import to_rgb_u8, upscale_rgb
from repas.deploy.quiet import native_reason, native_stderr, quiet_executorch
from repas.errors import RepasError
from repas.json_files import MAX_SIDE, Fields, check_number, read_json
from repas.sr_geometry import upscale_tiled

MANIFEST = "model.json"
BUNDLE_FORMAT = 1
Run = Callable[[np.ndarray], np.ndarray]  # (1, C, H, W) float32 -> model output, float32
RUNTIMES = {"onnx": "onnxruntime", "pte": "executorch"}


TASKS = ("classification", "super-resolution", "denoising")
_FIX = "re-export the bundle ('repas export RUN_DIR')"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def plain_file_name(name: Any, where: str) -> str:  # noqa: ANN401 (read from model.json)
    """``name`` if it names a file directly inside a directory (no folder part, not . or ..);
    otherwise a RepasError: a bundle may not point outside itself."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or \
            "\0" in name or Path(name).name != name:
        raise RepasError(f"{where} is {name!r:.80}, not the plain name of a file in the bundle: a bundle may not "
                         f"point outside its directory; {_FIX}")
    return name


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """The bundle's ``model.json``, every field the runner uses checked (types, bounds, file
    names inside the bundle, a SHA-256 for every model file); one RepasError line otherwise."""
    path = Path(bundle) / MANIFEST
    if not path.exists():
        raise RepasError(f"{bundle} is not a repas bundle: no {MANIFEST} (make one with 'repas export RUN_DIR')")
    f = Fields(read_json(path, fix=_FIX), path, fix=_FIX)
    if f.obj.get("bundle_format") != BUNDLE_FORMAT:
        raise RepasError(f"{path}: bundle_format {f.obj.get('bundle_format')!r:.40}, this repas reads "
                         f"{BUNDLE_FORMAT}; re-export the bundle with this version")
    task = f.str("task", TASKS)
    spec = f.object("input")
    shape = spec.shape("shape", 4)
    if shape[0] != 1 or shape[1] > 4:
        spec.fail(f"is {shape}; a bundle takes one image of 1 to 4 channels, [1, C, H, W]", "shape")
    if task == "classification":
        for key in ("mean", "std"):
            values = spec.list(key)
            if len(values) not in (1, shape[1]):
                spec.fail(f"has {len(values)} values for {shape[1]} channels", key)
            for i, v in enumerate(values):
                check_number(v, f"{path}: input.{key}[{i}]", 1e-6 if key == "std" else -1e6, 1e6)
        labels = f.list("labels", [])
        if not all(isinstance(x, str) for x in labels):
            f.fail("must be a list of strings", "labels")
    else:
        f.int("scale", 1, 8)
        spec.int("overlap", 0, MAX_SIDE)
        spec.str("colour", ("y", "rgb"))
    files = f.object("files")
    for fmt in files.obj:
        names = files.object(fmt)
        for precision in names.obj:
            plain_file_name(names.obj[precision], f"{path}: files.{fmt}.{precision}")
    hashes = f.object("sha256") if "sha256" in f.obj else None
    for name, digest in (hashes.obj if hashes else {}).items():
        plain_file_name(name, f"{path}: a name in sha256")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            hashes.fail("must be 64 lowercase hex digits (a SHA-256)", name)
    return f.obj


def model_file(bundle: str | Path, manifest: dict[str, Any], fmt: str, precision: str) -> Path:
    """The path of the bundle's ``fmt`` (onnx / pte) model at ``precision`` (float / int8): a
    regular file directly inside the bundle (not a link out of it)."""
    files = manifest["files"]
    if fmt not in files or precision not in files[fmt]:
        have = ", ".join(f"{f} {p}" for f, ps in files.items() for p in ps) or "none"
        raise RepasError(f"{bundle} has no {fmt} {precision} model (it has: {have}); export it with "
                         f"'repas export RUN_DIR --format {fmt}'" + (" --int8" if precision == "int8" else ""))
    name = plain_file_name(files[fmt][precision], f"{MANIFEST}'s files.{fmt}.{precision}")
    path = Path(bundle) / name
    if not path.exists():
        raise RepasError(f"{path} is listed in {MANIFEST} but missing; re-export the bundle")
    if path.is_symlink() or not path.is_file() or path.resolve().parent != Path(bundle).resolve():
        raise RepasError(f"{path} is not a regular file inside the bundle (a link or a folder): a bundle may not "
                         f"point outside its directory; {_FIX}")
    return path


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, in hex (as ``sha256sum`` prints it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, manifest: dict[str, Any]) -> None:
    """Raise a RepasError unless ``path`` has the SHA-256 that ``model.json`` records for it.
    No hash, no load: a file without one is refused like a file that does not match."""
    recorded = manifest.get("sha256")
    if not isinstance(recorded, dict) or path.name not in recorded:
        raise RepasError(f"{MANIFEST} of {path.parent} records no SHA-256 for {path.name}: repas runs only model "
                         f"files whose hash it can check; {_FIX}")
    if file_sha256(path) != recorded[path.name]:
        raise RepasError(f"{path} does not match the SHA-256 recorded in {MANIFEST}: the file was damaged or "
                         "replaced; re-export the bundle ('repas export RUN_DIR')")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _ort_errors() -> tuple[type[Exception], ...]:
    """The exceptions onnxruntime raises on a model it cannot load or run (its own types,
    all subclasses of Exception only)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoModel", "NoSuchFile",
             "NotImplemented", "RuntimeException")
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


def onnx_session(model: str | Path | bytes, threads: int = 1):  # noqa: ANN201 (onnxruntime.InferenceSession)
    """An onnxruntime CPU session for a model file (or its bytes) at ``threads`` intra-op
    threads; a file onnxruntime cannot load is a RepasError."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise RepasError("running a .onnx model needs onnxruntime: pip install onnxruntime") from None
    opts = ort.SessionOptions()
    # severity 3, errors only: onnxruntime writes its warnings (e.g. on unused initializers)
    # straight to stderr, past Python's warnings and logging
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                    providers=["CPUExecutionProvider"])
    except _ort_errors() as e:
        what = "the ONNX model" if isinstance(model, bytes) else str(model)
        # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from PATH failed:Protobuf parsing failed."
        reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : |Load model from .* failed:", "", _one_line(e))
        raise RepasError(f"onnxruntime cannot load {what} ({reason}); re-export it") from None


def onnx_runner(path: str | Path, threads: int = 1) -> Run:
    """The ONNX model at ``path`` on onnxruntime's CPU provider; a call it cannot run (an
    input of another shape) is a RepasError."""
    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    errors = _ort_errors()

    def run(x: np.ndarray) -> np.ndarray:
        try:
            return session.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]
        except errors as e:
            raise RepasError(f"onnxruntime cannot run {path} on an input of shape {tuple(x.shape)} "
                             f"({_one_line(e)})") from None

    return run


def load_pte(program: bytes, what: str = "the .pte program") -> Any:  # noqa: ANN401 (executorch.runtime.Method)
    """The forward method of a .pte program on ExecuTorch's runtime, ready for
    ``method.execute([inputs])``; a program the runtime cannot load is a RepasError.

    The runtime reads ``program`` in place: keep the bytes alive as long as the method."""
    try:
        with quiet_executorch():
            from executorch.runtime import Runtime
    except ImportError:
        raise RepasError("running a .pte model needs ExecuTorch: pip install executorch (or use --format onnx)"
                         ) from None
    lines: list[str] = []
    try:
        with native_stderr() as lines:  # the runtime's C++ log: noise, or why a program fails to load
            return Runtime.get().load_program(program).load_method("forward")
    except RuntimeError as e:
        raise RepasError(f"ExecuTorch cannot load {what} ({native_reason(lines) or _one_line(e)}); "
                         "re-export it") from None


def pte_runner(path: str | Path) -> Run:
    """A .pte program on ExecuTorch's runtime (its Python binding exchanges torch tensors)."""
    try:
        import torch
    except ImportError:
        raise RepasError("running a .pte model needs ExecuTorch: pip install executorch (or use --format onnx)"
                         ) from None
    program_bytes = Path(path).read_bytes()
    method = load_pte(program_bytes, str(path))

    def run(x: np.ndarray, _keep: bytes = program_bytes) -> np.ndarray:  # the runtime reads the bytes in place
        try:
            return method.execute([torch.from_numpy(np.ascontiguousarray(x, np.float32))])[0].numpy()
        except RuntimeError as e:
            raise RepasError(f"ExecuTorch cannot run {path} on an input of shape {tuple(x.shape)} "
                             f"({_one_line(e)})") from None

    return run


def load_runner(bundle: str | Path, fmt: str = "onnx", precision: str = "float", threads: int = 1) -> Run:
    """The bundle's model as a function on (1, C, H, W) float32 arrays of its input shape,
    once its file is checked against the SHA-256 in ``model.json``."""
    if fmt not in RUNTIMES:
        raise RepasError(f"unknown model format {fmt!r}; expected one of {', '.join(RUNTIMES)}")
    manifest = read_manifest(bundle)
    path = model_file(bundle, manifest, fmt, precision)
    check_sha256(path, manifest)
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

def upscale_array(run: Run, lr: np.ndarray, scale: int, *, tile: tuple[int, int], overlap: int) -> np.ndarray:
    """Super-resolve a (C, H, W) float32 LR array with a model of static input ``tile`` (h, w),
    window by window (``repas.sr_geometry.tile_windows``).

    An image smaller than the tile is edge-padded to it (its outermost ``overlap`` pixels
    then differ slightly from a whole-image call); otherwise the result equals one."""
    _, h, w = lr.shape
    ph, pw = max(tile[0] - h, 0), max(tile[1] - w, 0)
    if ph or pw:
        lr = np.pad(lr, ((0, 0), (0, ph), (0, pw)), mode="edge")
    out = upscale_tiled(run, lr[None], scale, window=tile, overlap=overlap,
                        zeros=lambda shape: np.zeros(shape, np.float32))
    return out[0, :, :h * scale, :w * scale]


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


def predict(bundle: str | Path, image: str | Path, *, output: str | Path | None = None, fmt: str = "onnx",
            precision: str = "float", k: int = 5, threads: int = 1) -> str:
    """Run the bundle on an image: the top-k labels of a classifier, or (SR, denoising) the
    model's image written to ``output``. Returns the lines to print."""
    manifest = read_manifest(bundle)
    task, spec = manifest["task"], manifest["input"]
    if task != "classification" and output is None:
        raise RepasError(f"a {task} bundle writes an image: give -o OUTPUT.png")
    img = open_image(image)  # before loading the model: a bad image is the cheaper error
    run = load_runner(bundle, fmt, precision, threads)
    if task == "classification":
        ranked = top_k(run(classifier_input(img, spec)), manifest.get("labels", []), k)
        return "\n".join(f"{p:7.2%}  {label}" for label, p in ranked)
    rgb, _ = to_rgb_u8(img)
    scale, tile, overlap = int(manifest["scale"]), tuple(spec["shape"][2:]), int(spec["overlap"])
    out = upscale_rgb(lambda planes: upscale_array(run, planes, scale, tile=tile, overlap=overlap), rgb, scale,
                      colour=spec["colour"])
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
