"""ONNX Runtime static QDQ quantization (ARM and generic CPU): per-channel INT8 weights, UINT8 activations.

The same function makes TensorRT's explicit-quantization graph with symmetric INT8 activations (tensorrt.py).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from quantize.calib import CalibrationReader
from quantize.graph import pools_as_convs
from quantize.runtimes.base import Quantizer, keep_float_sets, register

__all__ = ["METHODS", "SCOPES", "OnnxRuntimeQuantizer", "correct_bias", "quantize_qdq"]

METHODS = ("minmax", "entropy", "percentile")
# what is quantized: every op ORT supports, or only convolutions/matmuls (elementwise distance in float)
SCOPES = ("all", "conv")
PERCENTILE_IMAGES = 16  # calibration images of the percentile method


def quantize_qdq(fp32: Path, out: Path, reader: CalibrationReader, method: str = "minmax", scope: str = "conv",
                 exclude: list[str] | None = None, symmetric: bool = False, work: Path | None = None,
                 pool_convs: bool = False) -> Path:
    """Write a QDQ INT8 graph of fp32 to out.

    Args:
        method: calibration method (minmax, entropy, percentile).
        scope: "all" ORT-supported ops, or "conv" (Conv/MatMul/Gemm only).
        exclude: node names kept in float (decided by the sensitivity measurement).
        symmetric: INT8 symmetric activations and weights (TensorRT explicit quantization).
        work: folder shared by the calls of one candidate search: the pre-processed graph and each method's
            calibration ranges are computed there once and reused (calibration was 65-90 % of a candidate's
            time, measured); None calibrates afresh.
        pool_convs: the branches' average pooling quantized as depthwise convolutions (graph.pools_as_convs):
            exact in float, and ORT's INT8 pooling is slow.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if work is None:
        with tempfile.TemporaryDirectory(prefix="lineside-ort-") as tmp:
            return quantize_qdq(fp32, out, reader, method, scope, exclude, symmetric, Path(tmp), pool_convs)
    pre = _pre_processed(fp32, work, pool_convs)
    cache = _calibration(pre, reader, method, work)
    extra: dict[str, object] = {}
    if symmetric:
        # TensorRT's ONNX parser takes only int8 into DequantizeLinear ("only activation types allowed as input to
        # this layer", onnx/onnx-tensorrt#850, microsoft/onnxruntime#14229): ORT's default int32 bias Q/DQ would
        # make the Jetson engine build fail, so biases stay float and TensorRT fuses them itself
        extra.update({"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    quantize_static(
        str(pre), str(out), None, quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod[_METHOD[method]], nodes_to_exclude=_expand(pre, exclude or []),
        op_types_to_quantize=["Conv", "MatMul", "Gemm"] if scope == "conv" else None, extra_options=extra,
        calibration_cache_path=cache,
    )
    return out


_METHOD = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}  # CalibrationMethod member names


def _pre_processed(fp32: Path, work: Path, pool_convs: bool) -> Path:
    """ORT's shape-inferred copy of fp32 in work, its pooling rewritten when asked (made once per search)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = work / ("pre-poolconv.onnx" if pool_convs else "pre.onnx")
    if not pre.is_file():
        work.mkdir(parents=True, exist_ok=True)
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        if pool_convs:
            model = onnx.load(str(pre))
            if pools_as_convs(model):
                onnx.save(model, str(pre))
    return pre


def _calibration(pre: Path, reader: CalibrationReader, method: str, work: Path) -> Path:
    """ORT calibration cache (tensor ranges) of every quantizable tensor of pre for one method, made once.

    Ranges are computed for all op types, so the same file serves the "conv" and "all" scopes and every set of
    excluded nodes; symmetric activations are derived from the ranges by the quantizer, not by calibration.
    """
    from onnxruntime.quantization import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    cache = work / f"calibration-{pre.stem}-{method}.json"
    if cache.is_file():
        return cache
    options: dict[str, object] = {"moving_average": False}
    if method == "percentile":
        options["percentile"] = 99.999
        # its histograms of every tensor were most of a 256 px search (about 60 s for 60 images); 16 images
        # still give millions of values per tensor for the 99.999th percentile
        reader = CalibrationReader(reader.inputs[:PERCENTILE_IMAGES])
    with tempfile.TemporaryDirectory(prefix="lineside-calib-") as tmp:
        calibrator = create_calibrator(pre, sorted(set(QDQRegistry) | set(QLinearOpsRegistry)),
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod[_METHOD[method]], extra_options=options)
        # a few images at a time: ORT otherwise holds every intermediate tensor of every calibration image at
        # once (the AST fine graph with 32 images was OOM-killed at 13.8 GB in percentile calibration); min/max
        # merge exactly across strides, histograms are merged by ORT's collector
        stride = calibration_stride(len(reader))
        # ORT's histogram calibrators print() their bin counts and percentiles on every call; its warnings go
        # through logging and stay
        with contextlib.redirect_stdout(io.StringIO()):
            for start in range(0, len(reader), stride):
                reader.set_range(start, start + stride)
                calibrator.collect_data(reader)
            save_tensors_data(calibrator.compute_data(), cache)
    reader.rewind()
    return cache


def calibration_stride(n: int, most: int = 8) -> int:
    """Largest divisor of n not above `most` (ORT requires the stride to divide the calibration set)."""
    return max(k for k in range(1, min(n, most) + 1) if n % k == 0)


def _expand(model: Path, names: list[str]) -> list[str]:
    """Node names, with entries ending in '/' expanded to every node under that prefix."""
    import onnx

    prefixes = [n for n in names if n.endswith("/")]
    if not prefixes:
        return names
    nodes = [n.name for n in onnx.load(str(model)).graph.node]
    return [n for n in names if not n.endswith("/")] + [n for n in nodes if any(n.startswith(p) for p in prefixes)]



def correct_bias(fp32: Path, qdq: Path, reader: CalibrationReader, work: Path | None = None) -> Path:
    """Bias correction of a QDQ graph in place (Nagel et al., "Data-Free Quantization", ICCV 2019, §4.2,
    with the input means measured on calibration images instead of derived from batch norm).

    Rounding a convolution's weights to INT8 shifts its output mean per channel by (W_q - W) applied to
    the mean input; the next layers carry the shift on. EfficientAD-style maps are a small difference of two
    large activations, so such shifts cost faint defects (NNCF corrects them too; ORT does not). Each
    convolution's bias absorbs minus its own shift: E[out_q] - E[out] = sum over inputs and taps of
    (W_q - W) * E[x] (border padding ignored). One FP32 pass measures every layer's input means.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq))
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    ref = onnx.load(str(fp32))
    ref_inits = {t.name: t for t in ref.graph.initializer}
    ref_conv = {n.name: n for n in ref.graph.node if n.op_type == "Conv" and n.name}  # the quantizer keeps node names

    def dequantized(name: str) -> "np.ndarray | None":
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            return None
        q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        zp = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if len(node.input) > 2 else 0.0
        shape = [-1] + [1] * (q.ndim - 1) if np.ndim(scale) == 1 else []
        return (q - np.reshape(zp, shape)) * np.reshape(scale, shape) if shape else (q - zp) * scale

    todo = []  # (qdq conv, weight error summed over taps, FP32 input tensor)
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 3 or node.name not in ref_conv:
            continue
        if any(a.name == "group" and a.i != 1 for a in node.attribute):
            continue
        src = ref_conv[node.name]
        w_q = dequantized(node.input[1])
        if w_q is None or src.input[1] not in ref_inits:
            continue  # weights kept in float: nothing to correct
        w = numpy_helper.to_array(ref_inits[src.input[1]]).astype(np.float64)
        todo.append((node, (w_q - w).sum(axis=(2, 3)), src.input[0]))
    if not todo:
        return qdq
    cache = None if work is None else work / "channel_means.npz"  # one FP32 pass per search
    means = _channel_means(ref, sorted({x for *_, x in todo}), reader, cache)
    for node, dw, x in todo:
        shift = dw @ means[x]  # (C_out, C_in) @ (C_in,)
        bias = node.input[2]
        if bias in inits:
            b = numpy_helper.to_array(inits[bias])
            inits[bias].CopyFrom(numpy_helper.from_array((b - shift).astype(b.dtype), bias))
        elif bias in producer and producer[bias].op_type == "DequantizeLinear" and producer[bias].input[0] in inits:
            q_name, s_name = producer[bias].input[:2]
            b = numpy_helper.to_array(inits[q_name])
            scale = numpy_helper.to_array(inits[s_name]).astype(np.float64)
            fixed = np.round(b - shift / scale).clip(-(2**31), 2**31 - 1).astype(b.dtype)
            inits[q_name].CopyFrom(numpy_helper.from_array(fixed, q_name))
    onnx.save(model, str(qdq))
    return qdq


def _channel_means(model: "object", names: list[str], reader: CalibrationReader,
                   cache: Path | None = None) -> dict[str, np.ndarray]:
    """Mean over calibration images and positions of each named tensor of an ONNX model, per channel (read
    from / written to cache when given)."""
    import onnx
    import onnxruntime as ort

    if cache is not None and cache.is_file():
        with np.load(cache) as saved:
            if set(saved.files) >= set(names):
                return {n: saved[n] for n in names}

    m = onnx.ModelProto.FromString(model.SerializeToString())  # type: ignore[attr-defined]
    inputs = {i.name for i in m.graph.input}
    known = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                          for n in names if n not in known and n not in inputs)
    fetch = [n for n in names if n not in inputs]
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    sums: dict[str, np.ndarray] = {}
    reader.rewind()
    n_img = 0
    while (feed := reader.get_next()) is not None:
        values = dict(zip(fetch, sess.run(fetch, feed)))
        values.update({n: feed[n] for n in names if n in inputs})
        for name, v in values.items():
            sums[name] = sums.get(name, 0) + v.astype(np.float64).mean(axis=tuple(i for i in range(v.ndim) if i != 1))
        n_img += 1
    means = {k: v / max(n_img, 1) for k, v in sums.items()}
    if cache is not None:
        np.savez(cache, **means)
    return means


class OnnxRuntimeQuantizer(Quantizer):
    """QDQ INT8 for ONNX Runtime: calibration methods, scopes, what stays float, and bias correction."""

    name = "onnxruntime"
    backend = "onnxruntime"
    artifact = "model_int8.onnx"
    symmetric: ClassVar[bool] = False  # INT8 symmetric activations and weights
    # average pooling as depthwise INT8 convolutions: ORT's QLinearAveragePool was a fifth of the default
    # model's INT8 time (default objects run, 256 px, x86: 125-128 -> 102-108 ms; FP32 282-290 ms)
    pool_convs = True
    settings: ClassVar[dict[str, str]] = {"average_pooling": "depthwise conv"}

    def candidates(self, finals: list[str], head: list[str],
                   sensitive: list[list[str]]) -> list[dict[str, Any]]:
        keep = keep_float_sets(finals, sensitive)
        # no Entropy: quantize_static cannot set its histogram bins (128 bins into 128 quantized bins), so
        # its scales equal MinMax's exactly (checked scale by scale); it would only cost a calibration pass.
        # The fast graphs first (every op of the branches quantized, Relu/pooling fused into the int8 chain,
        # the head float): once one passes, the slower ones below it are not measured (no_faster)
        c: list[dict[str, Any]] = [{"method": "minmax", "scope": "all", "keep_float": []}]
        c += [{"method": "minmax", "scope": "all", "keep_float": head + [n for n in k if n not in head]} for k in keep]
        c += [{"method": "percentile", "scope": "all", "keep_float": head}]
        # the same fast graphs with bias correction (ORT has none of its own; NNCF does)
        c += [{"method": m, "scope": "all", "keep_float": head, "bias_correction": True} for m in ("minmax", "percentile")]
        # only convolutions quantized: every other op stays float
        c += [{"method": m, "scope": "conv", "keep_float": []} for m in ("minmax", "percentile")]
        c += [{"method": "minmax", "scope": "conv", "keep_float": k} for k in keep[1:]]
        return c

    def no_faster(self, cand: dict[str, Any], other: dict[str, Any]) -> bool:
        if super().no_faster(cand, other):
            return True
        if other.get("bias_correction") or cand["method"] != other["method"]:
            return False
        # bias correction changes bias values, not the graph: as fast as the uncorrected twin
        if cand.get("bias_correction") and cand["scope"] == other["scope"] and cand["keep_float"] == other["keep_float"]:
            return True
        # the conv scope leaves every non-convolution op in float and was never the faster one (quant.json of
        # the quickstart and of a 256 px default run, 2026-12-01: 2-39 ms slower at 128 and 256 px)
        return cand["scope"] == "conv" and other["scope"] == "all"

    def build(self, fp32: Path, out: Path, calib: CalibrationReader, cand: dict[str, Any], device: str,
              work: Path) -> Path:
        art = quantize_qdq(fp32, out, calib, cand["method"], cand["scope"], cand["keep_float"],
                           symmetric=self.symmetric, work=work, pool_convs=self.pool_convs)
        return correct_bias(fp32, art, calib, work) if cand.get("bias_correction") else art


register(OnnxRuntimeQuantizer())
