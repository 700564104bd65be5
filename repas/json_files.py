"""Reading the JSON files a model, run or bundle directory holds, as untrusted input.

Every JSON read in repas goes through ``read_json``: a missing, unreadable or malformed
file is one RepasError line naming the file and what is wrong with it, and ``NaN`` /
``Infinity`` (which Python's json module accepts) are refused. ``Fields`` reads one
object's fields with their types and bounds, so that a malformed field is one line that
names the file and the field, never a KeyError or an IndexError further on. The bounds
below keep sizes read from files (channels, kernels, image sides) from allocating
without limit before anything else checks them.

This module imports nothing beyond the standard library and ``repas.errors``: the
torch-free runner (``repas.deploy.runner``) uses it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from repas.errors import RepasError

# Sizes read from files: far beyond any net repas builds, far below what exhausts memory.
MAX_CHANNELS = 1 << 16
MAX_KERNEL = 63
MAX_SIDE = 1 << 15  # an image or feature map's height or width
MAX_LAYERS = 4096
MAX_ELEMENTS = 1 << 26  # one input tensor: 64 M values (256 MB in float32)


def _refuse_constant(name: str) -> Any:  # noqa: ANN401 (json's parse_constant hook)
    raise ValueError(f"{name} is not a number repas accepts")


def read_json(path: str | Path, *, fix: str = "") -> Any:  # noqa: ANN401 (any JSON value)
    """The JSON value in ``path``; any failure is a RepasError that names the file, says
    what is wrong, and ends with ``fix`` (what to do, e.g. "re-export the bundle")."""
    path = Path(path)
    tail = f"; {fix}" if fix else ""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RepasError(f"{path} does not exist{tail}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RepasError(f"{path} cannot be read ({e}){tail}") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise RepasError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}){tail}") from None
    except ValueError as e:  # NaN / Infinity
        raise RepasError(f"{path}: {e}{tail}") from None
    except RecursionError:
        raise RepasError(f"{path} is nested too deeply to be a repas file{tail}") from None


def json_kind(value: Any) -> str:  # noqa: ANN401
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)


def check_int(value: Any, where: str, low: int, high: int) -> int:  # noqa: ANN401
    """``value`` as an int in [low, high]; anything else (a float, a boolean, a string, out
    of range) is a RepasError naming ``where``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise RepasError(f"{where} must be a whole number, got {json_kind(value)} ({value!r:.40})")
    if not low <= value <= high:
        raise RepasError(f"{where} must lie in [{low}, {high}], got {value}")
    return value


def check_number(value: Any, where: str, low: float = -math.inf, high: float = math.inf) -> float:  # noqa: ANN401
    """``value`` as a finite float in [low, high]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise RepasError(f"{where} must be a number, got {json_kind(value)} ({value!r:.40})")
    if not math.isfinite(value) or not low <= value <= high:
        raise RepasError(f"{where} must be a finite number in [{low}, {high}], got {value}")
    return float(value)


def check_shape(value: Any, where: str, rank: int | None = None) -> list[int]:  # noqa: ANN401
    """A tensor shape from a file: a list of positive ints (``rank`` of them, if given),
    each side at most MAX_SIDE and MAX_ELEMENTS values in all."""
    if not isinstance(value, list) or not value or (rank is not None and len(value) != rank):
        raise RepasError(f"{where} must be a list of {rank or 'some'} positive whole numbers, got {value!r:.60}")
    shape = [check_int(v, f"{where}[{i}]", 1, MAX_SIDE) for i, v in enumerate(value)]
    if math.prod(shape) > MAX_ELEMENTS:
        raise RepasError(f"{where} {shape} has {math.prod(shape):,} values, more than repas accepts "
                         f"({MAX_ELEMENTS:,})")
    return shape


def check_json_value(value: Any, where: str, depth: int = 0) -> None:  # noqa: ANN401
    """Raise unless ``value`` is plain JSON data (null, booleans, finite numbers, strings,
    lists, objects with string keys): e.g. a builder's keyword arguments."""
    if depth > 32:
        raise RepasError(f"{where} is nested too deeply")
    if value is None or isinstance(value, (bool, str, int)):
        return
    if isinstance(value, float):
        check_number(value, where)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_json_value(v, f"{where}[{i}]", depth + 1)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise RepasError(f"{where}: keys must be strings, got {k!r}")
            check_json_value(v, f"{where}.{k}", depth + 1)
    else:
        raise RepasError(f"{where} must be plain JSON data, got {type(value).__name__}")


_MISSING = object()


class Fields:
    """Typed, bounded access to the fields of one JSON object read from ``path``; every
    error is one line naming the file, the field (``where`` is the object's own place in
    the file, e.g. ``groups[3]``) and ``fix``."""

    def __init__(self, obj: Any, path: str | Path, where: str = "", fix: str = "") -> None:  # noqa: ANN401
        self.path, self.where, self.fix = str(path), where, fix
        if not isinstance(obj, dict):
            self.fail(f"must be a JSON object, got {json_kind(obj)}")
        self.obj: dict[str, Any] = obj

    def inner(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, message: str, key: str | None = None) -> None:
        inner = self.inner(key) if key is not None else self.where
        where = f"{self.path}: {inner}" if inner else self.path
        raise RepasError(f"{where} {message}" + (f"; {self.fix}" if self.fix else ""))

    def _get(self, key: str, default: Any) -> Any:  # noqa: ANN401
        if key in self.obj:
            return self.obj[key]
        if default is _MISSING:
            self.fail("is missing", key)
        return default

    def _checked(self, check: Any, key: str, *args: Any) -> Any:  # noqa: ANN401
        try:
            return check(self.obj[key], f"{self.path}: {self.inner(key)}", *args)
        except RepasError as e:
            raise RepasError(f"{e}" + (f"; {self.fix}" if self.fix else "")) from None

    def int(self, key: str, low: int, high: int, default: Any = _MISSING) -> Any:  # noqa: ANN401
        value = self._get(key, default)
        return value if key not in self.obj else self._checked(check_int, key, low, high)

    def number(self, key: str, low: float = -math.inf, high: float = math.inf,
               default: Any = _MISSING) -> Any:  # noqa: ANN401
        value = self._get(key, default)
        return value if key not in self.obj else self._checked(check_number, key, low, high)

    def shape(self, key: str, rank: int | None = None) -> list[int]:
        self._get(key, _MISSING)
        return self._checked(check_shape, key, rank)

    def json(self, key: str, default: Any = _MISSING) -> Any:  # noqa: ANN401
        """A field of plain JSON data (no NaN, no non-string keys)."""
        value = self._get(key, default)
        if key in self.obj:
            self._checked(check_json_value, key)
        return value

    def str(self, key: str, choices: tuple[str, ...] | None = None, default: Any = _MISSING) -> Any:  # noqa: ANN401
        value = self._get(key, default)
        if key not in self.obj:
            return value
        if not isinstance(value, str):
            self.fail(f"must be a string, got {json_kind(value)}", key)
        if choices is not None and value not in choices:
            self.fail(f"is {value!r:.60}; expected one of {', '.join(choices)}", key)
        return value

    def list(self, key: str, default: Any = _MISSING) -> Any:  # noqa: ANN401
        value = self._get(key, default)
        if key in self.obj and not isinstance(value, list):
            self.fail(f"must be a list, got {json_kind(value)}", key)
        return value

    def object(self, key: str) -> Fields:
        """The object in field ``key``, itself as Fields."""
        return Fields(self._get(key, _MISSING), self.path, self.inner(key), self.fix)

    def objects(self, key: str) -> list[Fields]:
        """The list of objects in field ``key``, each as Fields."""
        return [Fields(v, self.path, f"{self.inner(key)}[{i}]", self.fix) for i, v in enumerate(self.list(key))]
