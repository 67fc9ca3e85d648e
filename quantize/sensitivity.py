"""Per-layer sensitivity: how much of each layer's output survives quantizing the whole graph.

One fully quantized QDQ graph is run beside its FP32 original on held-out good images; for every
Conv/MatMul/Gemm node the signal-to-quantization-noise ratio (dB) of its output against the float output
is what the mixed-precision candidates are cut from. It measures accumulated error, so a layer fed by a
fragile branch scores low too: the candidates keep whole fragile paths in float, not single layers.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

__all__ = ["layer_sqnr", "sensitive_nodes", "QUANTIZABLE"]

QUANTIZABLE = ("Conv", "MatMul", "Gemm")


def layer_sqnr(fp32: Path, qdq: Path, inputs: list[np.ndarray]) -> dict[str, float]:
    """SQNR in dB of every quantizable node's output, FP32 graph vs QDQ graph (higher = less error)."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as dbg

    producers = {n.output[0]: n.name for n in onnx.load(str(fp32)).graph.node if n.op_type in QUANTIZABLE}
    with tempfile.TemporaryDirectory(prefix="lineside-sens-") as tmp:
        f_aug, q_aug = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        dbg.modify_model_output_intermediate_tensors(str(fp32), str(f_aug))
        dbg.modify_model_output_intermediate_tensors(str(qdq), str(q_aug))
        feeds = [{"image": x} for x in inputs]
        f_act = dbg.collect_activations(str(f_aug), feeds)
        q_act = dbg.collect_activations(str(q_aug), feeds)
    errors = dbg.compute_activation_error(dbg.create_activation_matching(q_act, f_act))
    out = {}
    for tensor, err in errors.items():
        if tensor in producers and err.get("xmodel_err") is not None:
            out[producers[tensor]] = round(float(err["xmodel_err"]), 2)
    return out


def sensitive_nodes(sqnr: dict[str, float], below_db: float) -> list[str]:
    """Nodes whose output SQNR is under the bound: what a candidate keeps in float."""
    return sorted(n for n, s in sqnr.items() if s < below_db)
