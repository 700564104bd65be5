"""Deployment: export fused nets, check them against PyTorch, measure their latency.

Depends on ``reparam`` and the spec only, never on ``search``.
"""

from repas.deploy.latency import onnx_latency, onnx_latency_interleaved, time_calls
from repas.deploy.onnx_export import export_onnx, onnx_session, run_onnx, verify_onnx

__all__ = ["export_onnx", "onnx_latency", "onnx_latency_interleaved", "onnx_session", "run_onnx", "time_calls",
           "verify_onnx"]
