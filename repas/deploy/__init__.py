"""Deployment: export fused nets, check them against PyTorch, measure their latency, bundle them.

Depends on ``reparam`` and the spec only, never on ``search``. Names are imported on first
use, so that ``repas.deploy.runner`` runs where torch is not installed.
"""

import importlib
from typing import Any

_EXPORTS = {
    "cpu_name": "repas.deploy.latency", "latency_each": "repas.deploy.latency", "onnx_latency": "repas.deploy.latency",
    "onnx_latency_each": "repas.deploy.latency", "onnx_latency_interleaved": "repas.deploy.latency",
    "time_calls": "repas.deploy.latency",
    "export_onnx": "repas.deploy.onnx_export", "onnx_session": "repas.deploy.onnx_export",
    "run_onnx": "repas.deploy.onnx_export",
    "export_models": "repas.deploy.bundle", "write_manifest": "repas.deploy.bundle",
    "export_bundle": "repas.deploy.bundle",
    "predict": "repas.deploy.runner", "load_runner": "repas.deploy.runner", "read_manifest": "repas.deploy.runner",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'repas.deploy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
