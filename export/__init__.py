"""Workstation side: training, ONNX export and evaluation (needs torch)."""
