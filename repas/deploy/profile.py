"""``repas profile``: measure a latency table for a spec's layer shapes on a backend.

Each row is the median time of one micro-model (one fused layer, the head or the SR tail)
after warm-up, at fixed threads, minus the time of an empty model; the table's constant
overhead is calibrated on whole nets built from the same parts. Backends: onnxruntime on the CPU
(the default), PyTorch eager on the CPU, and ExecuTorch with XNNPACK when installed.
"""

from __future__ import annotations

import hashlib
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from repas.deploy.latency import cpu_name, time_calls
from repas.deploy.micro_models import MicroModule, Part, onnx_bytes, random_inputs
from repas.errors import RepasError
from repas.json_files import read_json
from repas.latency_table import (
    OVERHEAD_KEY,
    Key,
    LatencyTable,
    boundary_grid,
    conv_key,
    describe_key,
    net_boundaries,
    net_parts,
    profile_grid,
)
from repas.spec import ArchSpec

BACKENDS = ("onnxruntime", "torch", "executorch", "executorch-int8")
Timer = Callable[[list[Part]], float]


def onnx_timer(threads: int, warmup: int, runs: int) -> tuple[Timer, str]:
    from repas.deploy.onnx_export import _require_onnxruntime, onnx_session

    ort = _require_onnxruntime()

    def timer(parts: list[Part]) -> float:
        # Inputs and output bound once to preallocated buffers: a row times the layer, not the
        # copies in and out of Python that a whole net makes only once (the overhead has those).
        session = onnx_session(onnx_bytes(parts), threads)
        inputs = random_inputs(parts)
        binding = session.io_binding()
        for i, x in zip(session.get_inputs(), inputs):
            binding.bind_ortvalue_input(i.name, ort.OrtValue.ortvalue_from_numpy(x))
        out = session.run(None, dict(zip((i.name for i in session.get_inputs()), inputs)))[0]
        binding.bind_ortvalue_output("output", ort.OrtValue.ortvalue_from_numpy(np.empty_like(out)))
        return time_calls(lambda: session.run_with_iobinding(binding), warmup, runs)["median_ms"]

    return timer, f"onnxruntime {ort.__version__} CPUExecutionProvider"


def torch_timer(threads: int, warmup: int, runs: int) -> tuple[Timer, str]:
    torch.set_num_threads(threads)

    def timer(parts: list[Part]) -> float:
        module = MicroModule(parts).eval()
        inputs = [torch.from_numpy(x) for x in random_inputs(parts)]
        with torch.inference_mode():
            return time_calls(lambda: module(*inputs), warmup, runs)["median_ms"]

    return timer, f"torch {torch.__version__} eager CPU"


def pte_program(parts: list[Part], int8: bool = False) -> bytes:
    """The .pte program of a chain of parts, XNNPACK-delegated; with ``int8``, quantized as
    export quantizes a net (PT2E, the XNNPACK quantizer, calibrated on the timing inputs)."""
    from repas.deploy.executorch_export import lower_to_pte

    inputs = tuple(torch.from_numpy(x) for x in random_inputs(parts))
    module = _delegable(MicroModule(parts).eval())
    if not int8:
        return lower_to_pte(module, inputs)
    from repas.deploy.qat import _pt2e, make_quantizer
    from repas.deploy.quiet import quiet_executorch

    names = _pt2e()
    with quiet_executorch(), torch.no_grad():
        graph = torch.export.export(module, inputs).module()
        prepared = names["prepare"](graph, make_quantizer())
        prepared(*inputs)
        return lower_to_pte(names["convert"](prepared), inputs)


def _delegable(module: MicroModule) -> MicroModule:
    """``module`` with each PReLU slope stored flat, as ``nn.PReLU`` holds it. The micro-model
    flattens its (1, C, 1, 1) slope in ``forward``: exported, that is an op on a weight, and
    XNNPACK then leaves the PReLU out (portable ``gt`` + ``where`` kernels, measured 4x a whole
    SR net's time at 360x640), where the exported fused net's PReLU runs in XNNPACK."""
    for names in module.index:
        if "slope" in names:
            i = names["slope"]
            module.params[i] = nn.Parameter(module.params[i].detach().flatten(), requires_grad=False)
    return module


def _pte_timer(int8: bool, threads: int, warmup: int, runs: int, cache_dir: str | Path | None) -> tuple[Timer, str]:
    """Time programs made by ``pte_program``. Each distinct chain is lowered once (lowering
    takes about a second, three in int8, and a table times hundreds of rows in several
    rounds) and kept in memory, and under ``cache_dir`` when given (a rerun reuses it); every
    round still loads a new method from the bytes."""
    from repas.atomic import atomic_write_bytes
    from repas.deploy.executorch_export import executorch_version, set_executorch_threads
    from repas.deploy.runner import load_pte

    version = executorch_version()
    set_executorch_threads(threads)
    programs: dict[str, bytes] = {}

    def program(parts: list[Part]) -> bytes:
        what = (version, int8, [tuple(p) for p in parts])
        if any(key[7] == "prelu" for key, _, _ in parts):
            what += ("flat prelu slope",)  # made by _delegable (programs made before it are not)
        name = hashlib.sha256(repr(what).encode()).hexdigest()[:20]
        if name not in programs:
            path = Path(cache_dir) / f"{name}.pte" if cache_dir else None
            if path is not None and path.is_file():
                programs[name] = path.read_bytes()
            else:
                programs[name] = pte_program(parts, int8)
                if path is not None:
                    atomic_write_bytes(path, programs[name])
        return programs[name]

    def timer(parts: list[Part]) -> float:
        inputs = [torch.from_numpy(x) for x in random_inputs(parts)]
        data = program(parts)
        method = load_pte(data)  # the runtime reads the program's bytes in place: keep them alive
        return time_calls(lambda: method.execute(inputs), warmup, runs)["median_ms"]

    return timer, f"executorch {version} XNNPACK" + (" int8" if int8 else "")


def executorch_timer(threads: int, warmup: int, runs: int, cache_dir: str | Path | None = None) -> tuple[Timer, str]:
    return _pte_timer(False, threads, warmup, runs, cache_dir)


def executorch_int8_timer(threads: int, warmup: int, runs: int,
                          cache_dir: str | Path | None = None) -> tuple[Timer, str]:
    """ExecuTorch with every micro-model in int8, quantized as export quantizes a net (PT2E,
    the XNNPACK quantizer, calibrated on the timing inputs): the rows of an int8 table."""
    return _pte_timer(True, threads, warmup, runs, cache_dir)


TIMERS = {"onnxruntime": onnx_timer, "torch": torch_timer, "executorch": executorch_timer,
          "executorch-int8": executorch_int8_timer}


def make_timer(backend: str, threads: int = 1, warmup: int = 10, runs: int = 50, *,
               cache_dir: str | Path | None = None) -> tuple[Timer, str]:
    """A function timing a chain of parts on ``backend``, and the backend's description.
    ExecuTorch backends keep the programs they lower under ``cache_dir`` when given."""
    if backend not in TIMERS:
        raise RepasError(f"unknown latency backend {backend!r}; expected one of {BACKENDS}")
    if backend.startswith("executorch"):
        return TIMERS[backend](threads, warmup, runs, cache_dir)
    return TIMERS[backend](threads, warmup, runs)


@dataclass
class ProfilePlan:
    """What a latency table measures: one micro-model per row, an empty model, and a few
    whole nets (chains of the same parts) that calibrate the constant overhead; optionally,
    per boundary (a tensor between two parts, ``(key, channels)``), a cheap part on it alone
    and two of them chained."""

    spec: ArchSpec
    divisor: int
    rows: list[Part]
    calibration: list[list[Part]]
    boundaries: list[tuple[Key, int]] = field(default_factory=list)

    def models(self) -> dict[str, list[Part]]:
        """Every model to time, by a file-safe name."""
        out = timed_models(self.rows, self.boundaries)
        out.update({f"net{i}": parts for i, parts in enumerate(self.calibration)})
        return out


def boundary_probe(key: Key, channels: int) -> Part:
    """The cheap part a boundary is measured with: a 1x1 depthwise conv on its tensor (one
    that every backend delegates, in float and int8, and that keeps the tensor's shape),
    then the activation of the layer that makes the tensor. The activation decides what
    the tensor is between two parts of an int8 net: int8 after a ReLU (fused into the
    conv) or none, float after a PReLU (which XNNPACK's quantizer leaves in float)."""
    _, _, _, h, w, _, _, act = key
    return conv_key(1, 1, h, w, channels, 1, "identity" if act == "none" else act), channels, channels


def plan_profile(spec: ArchSpec, divisor: int = 4, boundaries: bool = False) -> ProfilePlan:
    """The rows for every layer shape of ``spec`` over a grid of channel counts (1, the
    multiples of ``divisor``, the full width), and three calibration nets: dense, the
    smallest on the grid, and one in between. With ``boundaries``, also every tensor
    between two parts over the same grid (see ``assemble_table``)."""
    if divisor < 1:
        raise RepasError(f"divisor must be >= 1, got {divisor}")
    grid = profile_grid(spec, divisor)
    rows = [(key, ci, co) for key, (cins, couts) in grid.items() for ci in cins for co in couts]
    dense = spec.widths
    small = [min(divisor, w) if lay.gated else w for lay, w in zip(spec.layers, dense)]
    middle = [max(s, w // 2 // divisor * divisor) for s, w in zip(small, dense)]
    calibration = [net_parts(spec, w) for w in (dense, middle, small)]
    joins = [(key, c) for key, cs in boundary_grid(spec, divisor).items() for c in cs] if boundaries else []
    return ProfilePlan(spec, divisor, rows, calibration, joins)


def time_models(models: dict[str, list[Part]], timer: Timer, *, passes: int = 5, progress: bool = True,
                extra: dict[str, Callable[[], float]] | None = None) -> dict[str, float]:
    """Each model's time: the lowest over ``passes`` rounds (a new session each) of the
    median of its calls, the same statistic as ``onnx_latency_each`` (which says why).
    ``extra`` jobs (each returning one round's median) are timed in the same rounds, under
    the same conditions of the machine (benchmarks compare whole nets with the table)."""
    jobs: dict[str, Callable[[], float]] = {name: (lambda p=parts: timer(p)) for name, parts in models.items()}
    jobs.update(extra or {})
    times: dict[str, list[float]] = {name: [] for name in jobs}
    bar = tqdm(total=passes * len(jobs), desc="profile", disable=not progress, leave=False)
    for _ in range(passes):
        for name, job in jobs.items():
            try:
                times[name].append(job())
            except RepasError:
                raise
            except Exception as e:  # a backend failing on one shape: say which
                if name not in models:
                    raise
                key, ci, co = models[name][0]
                raise RepasError(f"timing {describe_key(key)}, {ci} -> {co} channels failed: {e}") from e
            bar.update()
    bar.close()
    return {name: min(t) for name, t in times.items()}


def assemble_table(plan: ProfilePlan, times: dict[str, float], meta: dict[str, str]) -> LatencyTable:
    """The table from measured times: each row minus the empty model's time, and a constant
    overhead such that the calibration nets are predicted right on average (the median of
    measured minus summed rows). The overhead absorbs what every part's own measurement
    adds and a whole net does not (feeding and fetching its tensors, one call each).

    Where the plan has boundaries, each one's row is what a part pays at its ends for that
    tensor and a chain does not: ``2 join - pair`` (each minus the empty model), that is
    twice the probe alone minus two probes chained, kept between 0 and the probe's own time
    (a difference of timings: noise could take it outside). On ExecuTorch that is the most of what
    rows over-count, and it grows with the tensor: XNNPACK's NCHW <-> NHWC layout changes
    and int8's quantize / dequantize, which a whole net does once at its ends; a constant
    overhead cannot stand in for it. The calibration nets' residuals subtract it likewise."""
    missing = [name for name in plan.models() if name not in times]
    if missing:
        raise RepasError(f"no time for {len(missing)} models, e.g. {missing[0]}: time every model of the plan")
    empty = times["empty"]
    table = LatencyTable(meta={"divisor": str(plan.divisor), "space": plan.spec.name,
                               "input_size": "x".join(map(str, plan.spec.input_size)), **meta})
    add_measured(table, plan.rows, plan.boundaries, times)

    def saved(parts: list[Part]) -> float:
        if not plan.boundaries:
            return 0.0
        return sum(table.entries[k][(c, c)] for k, c in net_boundaries(plan.spec, [co for _, _, co in parts[:-1]]))
    residuals = [times[f"net{i}"] - sum(table.entries[k][(ci, co)] for k, ci, co in parts) + saved(parts)
                 for i, parts in enumerate(plan.calibration)]
    table.add(OVERHEAD_KEY, 0, 0, float(np.median(residuals)))
    table.meta["empty_model_ms"] = f"{empty:.6g}"
    return table


def add_measured(table: LatencyTable, rows: list[Part], boundaries: list[tuple[Key, int]],
                  times: dict[str, float]) -> None:
    """Each row's time (named ``row<i>``) and boundary's (``join<i>``, ``pair<i>``), minus
    the empty model's, into ``table``."""
    empty = times["empty"]
    for i, (key, ci, co) in enumerate(rows):
        table.add(key, ci, co, max(times[f"row{i:04d}"] - empty, 0.0))
    for i, (key, c) in enumerate(boundaries):
        # between 0 and the probe's own time: two probes chained take no less than one
        probe = max(times[f"join{i:04d}"] - empty, 0.0)
        table.add(key, c, c, min(max(2 * times[f"join{i:04d}"] - times[f"pair{i:04d}"] - empty, 0.0), probe))


def timed_models(rows: list[Part], boundaries: list[tuple[Key, int]]) -> dict[str, list[Part]]:
    """The micro-models of rows and boundaries by name, and the empty model."""
    out = {"empty": [(OVERHEAD_KEY, 1, 1)]}
    out.update({f"row{i:04d}": [part] for i, part in enumerate(rows)})
    for i, (key, c) in enumerate(boundaries):
        out[f"join{i:04d}"] = [boundary_probe(key, c)]
        out[f"pair{i:04d}"] = [boundary_probe(key, c)] * 2
    return out


def profile(spec: ArchSpec, backend: str = "onnxruntime", *, divisor: int = 4, threads: int = 1, warmup: int = 20,
            runs: int = 200, passes: int = 5, progress: bool = True, boundaries: bool | None = None) -> LatencyTable:
    """Time every layer shape of ``spec`` over a grid of channel counts (multiples of
    ``divisor``) on ``backend``, one micro-model at a time; ``runs`` timed calls per pass.
    ``boundaries`` (by default on ExecuTorch, where they matter): measure them too."""
    timer, description = make_timer(backend, threads, warmup, max(1, runs // passes))
    if boundaries is None:
        boundaries = backend.startswith("executorch")
    plan = plan_profile(spec, divisor, boundaries)
    started = time.perf_counter()
    times = time_models(plan.models(), timer, passes=passes, progress=progress)
    return assemble_table(plan, times, {
        "backend": description, "device": cpu_name(), "machine": platform.machine(), "threads": str(threads),
        "warmup": str(warmup), "runs": str(runs), "passes": str(passes), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": f"{time.perf_counter() - started:.1f}"})


# ---- tables measured on another device ------------------------------------------------------
def write_plan(plan: ProfilePlan, out: str | Path, pte: bool = False) -> list[Path]:
    """The plan's models as files for another device: ``<name>.onnx`` (and ``<name>.pte``
    for ExecuTorch/XNNPACK with ``pte``), their input shapes, and ``plan.json`` (the spec
    and divisor, from which ``table_from_device`` rebuilds the same plan)."""
    from repas.atomic import atomic_write_bytes, atomic_write_json
    from repas.deploy.micro_models import input_shapes

    out = Path(out)
    written = []
    models = plan.models()
    for name, parts in tqdm(models.items(), desc="micro-models", leave=False):
        atomic_write_bytes(out / f"{name}.onnx", onnx_bytes(parts))
        written.append(out / f"{name}.onnx")
        if pte:
            from repas.deploy.executorch_export import lower_to_pte

            example = tuple(torch.from_numpy(x) for x in random_inputs(parts))
            atomic_write_bytes(out / f"{name}.pte", lower_to_pte(MicroModule(parts).eval(), example))
            written.append(out / f"{name}.pte")
    atomic_write_json(out / "plan.json", {"format": "repas-profile-plan", "version": 1, "divisor": plan.divisor,
                                          "boundaries": bool(plan.boundaries), "spec": plan.spec.to_dict(),
                                          "inputs": {n: input_shapes(p) for n, p in models.items()}})
    return written


def table_from_device(folder: str | Path) -> LatencyTable:
    """The latency table from a folder that ``write_plan`` wrote and the device's timer
    (``scripts/time_micro_models.py``) filled with ``times.json``."""
    folder = Path(folder)
    for name in ("plan.json", "times.json"):
        if not (folder / name).is_file():
            raise RepasError(f"{folder} has no {name}: export the micro-models with scripts/export_micro_models.py, "
                             "then time them on the device with scripts/time_micro_models.py")
    try:
        saved = read_json(folder / "plan.json", fix="export the micro-models again")
        measured = read_json(folder / "times.json", fix="time the micro-models again")
        spec = ArchSpec.from_dict(saved["spec"])
        times, meta = measured["times_ms"], {k: str(v) for k, v in measured["meta"].items()}
        divisor = int(saved["divisor"])
        boundaries = bool(saved.get("boundaries", False))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise RepasError(f"{folder}: plan.json or times.json is malformed ({e})") from None
    return assemble_table(plan_profile(spec, divisor, boundaries), {k: float(v) for k, v in times.items()}, meta)
