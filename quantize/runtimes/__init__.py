"""One module per runtime: each turns the FP32 ONNX graph plus a CalibrationReader into an INT8 artifact and
registers its Quantizer (vendor packages are imported only when a quantizer runs)."""

from quantize.runtimes import litert, onnxruntime, openvino, tensorrt  # noqa: F401 - each registers itself
from quantize.runtimes.base import QUANTIZERS, Quantizer, quantizer, register

__all__ = ["QUANTIZERS", "Quantizer", "quantizer", "register"]
