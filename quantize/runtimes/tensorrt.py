"""TensorRT explicit quantization: ONNX Runtime's QDQ graph with symmetric INT8, built into an engine on the
device (validated here in ONNX Runtime)."""

from __future__ import annotations

from typing import Any, ClassVar

from quantize.runtimes.base import keep_float_sets, register
from quantize.runtimes.onnxruntime import OnnxRuntimeQuantizer

__all__ = ["TensorRtQuantizer"]


class TensorRtQuantizer(OnnxRuntimeQuantizer):
    """Symmetric QDQ INT8 for TensorRT; the FP32 graph ships beside it for the device's FP16 engine."""

    name = "tensorrt"
    backend = "onnxruntime"
    artifact = "model_int8_qdq.onnx"
    symmetric = True
    pool_convs = False  # measured for ONNX Runtime's CPU kernels; TensorRT's INT8 pooling is its own
    fp32_copy = "model_fp32.onnx"
    # graphs made with int32 bias Q/DQ (before this key) cannot be parsed by TensorRT: re-made once
    settings: ClassVar[dict[str, str]] = {"qdq_bias": "float"}

    def candidates(self, finals: list[str], head: list[str],
                   sensitive: list[list[str]]) -> list[dict[str, Any]]:
        keep = keep_float_sets(finals, sensitive)
        return [{"method": m, "scope": "conv", "keep_float": k}
                for m in ("minmax", "percentile") for k in keep]


register(TensorRtQuantizer())
