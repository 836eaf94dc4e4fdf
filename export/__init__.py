"""Workstation side: training, ONNX export and evaluation (needs torch)."""

import edge_ad  # noqa: F401  (first: it turns ONNX Runtime's telemetry off, before onnxruntime is imported)
