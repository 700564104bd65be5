"""Third-party noise silenced at its source, one named warning or log line at a time.

An export used to print screens of warnings and log lines from ExecuTorch, torchao,
torch and onnxruntime, none of which a repas user can act on. Each is listed here by what
it is and where it comes from (measured on torch 2.14, executorch 1.5, torchao 0.18
and onnxruntime 1.31), so that everything else, repas's own messages included, still shows.

Standard library only: the torch-free runner (``repas predict``) uses it too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import IO

# (category, module regex) of the warnings that lowering, quantizing and loading a .pte raise
WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (DeprecationWarning, r"executorch\.exir\._serialize\._flatbuffer$"),  # importlib.resources.read_binary
    (DeprecationWarning, r"executorch\.exir\.dialects\.edge\._ops$"),  # importlib.resources.read_text
    (DeprecationWarning, r"importlib\.resources\._legacy$"),  # open_text, which that read_text calls
    # ExperimentalWarning (a DeprecationWarning) on importing ExecuTorch's runtime
    (DeprecationWarning, r"executorch\.extension\.pybindings\.portable_lib$"),
    (UserWarning, r"torchao\.quantization\.quant_primitives$"),  # "TorchAODType is deprecated", 14 per net
)
# torch's logger that torchao's import warns on ("<enum 'KernelPreference'> is an Enum subclass ...")
PYTREE_LOGGER = "torch.utils._pytree"
# ExecuTorch's C++ runtime logs to file descriptor 2 when it first sizes its threadpool
NATIVE_NOISE = re.compile(r"\[(cpuinfo_utils|threadpool)\.cpp:\d+\] ")


@contextlib.contextmanager
def quiet_executorch() -> Iterator[None]:
    """Run the block (importing, lowering, quantizing or loading with ExecuTorch / torchao)
    without the warnings in ``WARNINGS`` and torch's pytree log line."""
    pytree = logging.getLogger(PYTREE_LOGGER)
    level = pytree.level
    with warnings.catch_warnings():
        for category, module in WARNINGS:
            warnings.filterwarnings("ignore", category=category, module=module)
        pytree.setLevel(logging.ERROR)
        try:
            yield
        finally:
            pytree.setLevel(level)


@contextlib.contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Capture what native code (ExecuTorch's C++ runtime) writes to file descriptor 2 in
    the block. Once the block ends the yielded list holds the captured lines. If the block
    succeeded, the lines that are not ``NATIVE_NOISE`` go on to ``sys.stderr``; if it raised,
    they are left to the caller, to say in its error why the runtime failed."""
    lines: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (a detached process): nothing to capture
        yield lines
        return
    sys.stderr.flush()  # Python's own buffered text goes where it was meant to, not here
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        except BaseException:
            _restore(saved, tmp, lines)
            raise
        _restore(saved, tmp, lines)
    kept = [line for line in lines if line.strip() and not NATIVE_NOISE.match(line)]
    if kept:
        sys.stderr.write("\n".join(kept) + "\n")


def _restore(saved: int, tmp: IO[bytes], lines: list[str]) -> None:
    os.dup2(saved, 2)
    os.close(saved)
    tmp.seek(0)
    lines.extend(tmp.read().decode(errors="replace").splitlines())


def native_reason(lines: list[str]) -> str:
    """The last line a native runtime logged that is not noise (its reason for failing), or ''."""
    kept = [line.strip() for line in lines if line.strip() and not NATIVE_NOISE.match(line)]
    return kept[-1] if kept else ""


class _PreprocessingAdvice(logging.Filter):
    """onnxruntime's quantizer advises, twice per model, to run its pre-processing first
    (shape inference and graph optimization, which a fused repas net does not need)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_quantizer = record.pathname.replace(os.sep, "/").endswith("onnxruntime/quantization/quantize.py")
        return not (from_quantizer and record.getMessage().startswith("Please consider"))


@contextlib.contextmanager
def quiet_onnx_quantizer() -> Iterator[None]:
    """Run onnxruntime's quantizer without its pre-processing advice. It logs with
    ``logging.warning`` on the root logger, which on first use would also configure
    logging for the whole process (a stderr handler for good): here a handler stands in
    for the block, so its other warnings still reach stderr, and none stays behind."""
    root = logging.getLogger()
    advice = _PreprocessingAdvice()
    stand_in = None
    if not root.handlers:
        stand_in = logging.StreamHandler()  # stderr, formatted as basicConfig's would be
        stand_in.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
        root.addHandler(stand_in)
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)
        if stand_in is not None:
            root.removeHandler(stand_in)
