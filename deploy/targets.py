"""The target table: drives help text, validation and dispatch of `edge-deploy --target`."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TARGETS", "Target"]


@dataclass(frozen=True)
class Target:
    name: str
    # runtimes a bundle may use (its quantizer, edge backend and quantized/<name>/ share the name); with
    # several, the INT8 artifacts that pass their gate are measured here and the fastest is used; float
    # bundles use the first
    runtimes: tuple[str, ...]
    precisions: tuple[str, ...]  # first is the default
    device: str  # default backend device in the generated config
    min_runtime_version: str
    summary: str
    quantize_device: str = "CPU"  # edge-quantize --device: whose INT8 scheme NNCF quantizes for
    builds_on_device: bool = False  # the engine is built on the device (install step), so no self-test here
    max_topk: int | None = None  # largest TopK k the runtime builds at min_runtime_version (top-k scores)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("jetson", ("tensorrt",), ("int8", "fp16"), "auto", "8.6",
               "NVIDIA Jetson: TensorRT engine built on the device from QDQ INT8 (or FP32 -> FP16) ONNX",
               builds_on_device=True, max_topk=1024),  # ITopKLayer's k limit in TensorRT 8.6 (3840 from 10.x)
        Target("intel-npu", ("openvino",), ("int8", "fp32"), "npu", "2024.0",
               "Intel Core Ultra NPU via OpenVINO IR (NNCF INT8), CPU fallback reported",
               quantize_device="NPU"),
        Target("arm", ("onnxruntime",), ("int8", "fp32"), "cpu", "1.17",
               "ARM boards: ONNX Runtime with the QDQ INT8 graph"),
        Target("cpu", ("onnxruntime", "openvino"), ("int8", "fp32"), "cpu", "",
               "x86 CPU: the faster of ONNX Runtime and OpenVINO INT8, measured on this machine"),
    )
}
