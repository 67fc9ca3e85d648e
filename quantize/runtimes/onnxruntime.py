"""ONNX Runtime static QDQ quantization (ARM and generic CPU): per-channel INT8 weights, UINT8 activations.

The same function makes TensorRT's explicit-quantization graph with symmetric INT8 activations.
"""

from __future__ import annotations

from pathlib import Path

from quantize.calib import CalibrationReader

__all__ = ["quantize_qdq", "METHODS", "SCOPES"]

METHODS = ("minmax", "entropy", "percentile")
# what is quantized: every op ORT supports, or only convolutions/matmuls (elementwise distance in float)
SCOPES = ("all", "conv")


def quantize_qdq(fp32: Path, out: Path, reader: CalibrationReader, method: str = "minmax", scope: str = "conv",
                 exclude: list[str] | None = None, symmetric: bool = False) -> Path:
    """Write a QDQ INT8 graph of fp32 to out.

    Args:
        method: calibration method (minmax, entropy, percentile).
        scope: "all" ORT-supported ops, or "conv" (Conv/MatMul/Gemm only).
        exclude: node names kept in float (decided by the sensitivity measurement).
        symmetric: INT8 symmetric activations and weights (TensorRT explicit quantization).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[method]
    extra = {"CalibMovingAverage": False}
    if symmetric:
        extra.update({"ActivationSymmetric": True, "WeightSymmetric": True})
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    exclude = _expand(pre, exclude or [])
    reader.rewind()
    quantize_static(
        str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=calib, nodes_to_exclude=exclude,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"] if scope == "conv" else None, extra_options=extra,
    )
    pre.unlink(missing_ok=True)
    return out


def _expand(model: Path, names: list[str]) -> list[str]:
    """Node names, with entries ending in '/' expanded to every node under that prefix."""
    import onnx

    prefixes = [n for n in names if n.endswith("/")]
    if not prefixes:
        return names
    nodes = [n.name for n in onnx.load(str(model)).graph.node]
    return [n for n in names if not n.endswith("/")] + [n for n in nodes if any(n.startswith(p) for p in prefixes)]
