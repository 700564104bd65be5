"""Deployment: export fused nets, check them against PyTorch, measure their latency.

Depends on ``reparam`` and the spec only, never on ``search``.
"""

from repas.deploy.latency import cpu_name, onnx_latency, onnx_latency_each, onnx_latency_interleaved, time_calls
from repas.deploy.onnx_export import export_onnx, onnx_session, run_onnx, verify_onnx

__all__ = ["cpu_name", "export_onnx", "onnx_latency", "onnx_latency_each", "onnx_latency_interleaved", "onnx_session",
           "run_onnx", "time_calls", "verify_onnx"]
