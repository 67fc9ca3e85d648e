"""The target table: drives help text, validation and dispatch of `edge-deploy --target`."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AUTO_RUNTIMES", "Target", "TARGETS"]


@dataclass(frozen=True)
class Target:
    name: str
    runtime: str  # edge backend name
    quantize_runtime: str  # edge-quantize --runtime that makes the INT8 artifact
    precisions: tuple[str, ...]  # first is the default
    device: str  # default backend device in the generated config
    min_runtime_version: str
    summary: str


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("jetson", "tensorrt", "tensorrt", ("int8", "fp16"), "auto", "8.6",
               "NVIDIA Jetson: TensorRT engine built on the device from QDQ INT8 (or FP32 -> FP16) ONNX"),
        Target("intel-npu", "openvino", "openvino", ("int8", "fp32"), "npu", "2024.0",
               "Intel Core Ultra NPU via OpenVINO IR (NNCF INT8), CPU fallback reported"),
        Target("arm", "onnxruntime", "ort", ("int8", "fp32"), "cpu", "1.17",
               "ARM boards: ONNX Runtime with the QDQ INT8 graph"),
        Target("cpu", "auto", "auto", ("int8", "fp32"), "cpu", "",
               "x86 CPU: the faster of ONNX Runtime and OpenVINO INT8, measured on this machine"),
    )
}

# what a target with runtime "auto" (cpu) quantizes and measures: (edge-quantize runtime, edge backend)
AUTO_RUNTIMES: tuple[tuple[str, str], ...] = (("ort", "onnxruntime"), ("openvino", "openvino"))
