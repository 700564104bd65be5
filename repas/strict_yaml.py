"""Dataclasses from YAML mappings, strictly: an unknown key is an error that suggests the
nearest valid one, a value must fit its field's type hint, and ``section.key=value``
overrides are parsed as YAML scalars. ``repas.config`` builds its configs with these."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any

import yaml

from repas.errors import RepasError


def _nearest(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check a YAML value against a field's type hint (int, float, str, bool, optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except RepasError:
                continue
        raise RepasError(f"{where}: {value!r} is not a valid {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads 1e30 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise RepasError(f"{where}: {value!r} is not a finite number")
            return number
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif typing.get_origin(tp) is dict:
        if isinstance(value, dict):
            return value
        raise RepasError(f"{where}: expected a mapping, got {value!r}")
    elif typing.get_origin(tp) is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp)
            return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        raise RepasError(f"{where}: expected a list, got {value!r}")
    else:
        return value
    raise RepasError(f"{where}: expected {tp.__name__}, got {value!r}")


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from a dict; unknown keys are errors with a suggestion."""
    if not isinstance(data, dict):
        raise RepasError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise RepasError(f"{where}: unknown key {key!r}{_nearest(key, list(fields))}; "
                             f"valid keys: {', '.join(fields)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value or {}, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, tp, f"{where}.{key}")
    return cls(**kwargs)


def set_value(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``data[a][b] = value`` for the dotted ``path`` 'a.b'."""
    keys = path.strip().split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise RepasError(f"override {path!r}: {k!r} is not a section")
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings to a nested dict (values parsed as YAML scalars)."""
    for item in overrides:
        if "=" not in item:
            raise RepasError(f"override {item!r} must look like section.key=value, e.g. search.epochs=2")
        path, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise RepasError(f"override {item!r}: the value is not valid YAML ({e.problem})") from None
        set_value(data, path, value)
    return data
