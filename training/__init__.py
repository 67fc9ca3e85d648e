"""Lineside training: datasets, teacher-student model families, evaluation, thresholds and ONNX export."""

__version__ = "0.1.0"
