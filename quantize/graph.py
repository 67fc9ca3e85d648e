"""Graph facts quantization decisions need: which convolutions are final (feed the distance directly), which
nodes form the scoring head (distance, normalisation, upsampling between the branches); and one exact rewrite
(average pooling as a depthwise convolution) for runtimes whose INT8 pooling is slow."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

__all__ = ["final_convs", "head_nodes", "pools_as_convs"]


def final_convs(path: Path) -> list[str]:
    """Conv nodes with no Conv downstream: the last layer of each branch (teacher, student, AE, whitening)."""
    g = onnx.load(str(path)).graph
    reaches_conv = _reaches_conv(g)
    return [n.name for n in g.node if n.op_type == "Conv" and not reaches_conv(n)]


def _reaches_conv(g: onnx.GraphProto) -> Callable[[onnx.NodeProto], bool]:
    """Whether a node of g feeds a Conv further down (memoised over the graph)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    memo: dict[str, bool] = {}

    def reaches_conv(node: onnx.NodeProto) -> bool:
        if node.name in memo:
            return memo[node.name]
        memo[node.name] = False
        hit = any(c.op_type == "Conv" or reaches_conv(c) for out in node.output for c in consumers.get(out, []))
        memo[node.name] = hit
        return hit

    return reaches_conv


def head_nodes(path: Path) -> list[str]:
    """Nodes of the top-level forward (/model/Sub, /model/Div, ...), not of a branch module (/model/student/...).

    That is where the anomaly signal is a small difference of large activations, so the 'all ops' scope
    keeps them float while every branch is quantized end to end (Relu/pooling fused, fewer Q/DQ hops).
    """
    return [n.name for n in onnx.load(str(path)).graph.node if _in_head(n.name) and n.op_type != "Constant"]


def _in_head(name: str) -> bool:
    """Whether an exported node name is of the top-level forward (/model/Sub), not of a branch module."""
    parts = name.split("/")
    return len(parts) == 3 and parts[1] == "model"


def pools_as_convs(model: onnx.ModelProto) -> int:
    """Replace each zero-padded AveragePool inside a branch that feeds a further Conv by the depthwise Conv
    that computes the same thing (weights 1/(kh*kw), same pads and strides); returns how many were replaced.
    `model` must carry inferred shapes (the pooled channels). A pool after a branch's final convolution is
    left as it is: it belongs to what candidates keep float with the final convolutions.

    Exact in float. ONNX Runtime's QLinearAveragePool was a fifth of the default model's INT8 time (4 pools,
    23 of 122 ms at 256 px on x86) while its depthwise INT8 convolution is fast, and a constant weight is
    exact in per-channel INT8; the head's own pooling is not touched (it stays float with the head).
    """
    from onnx import helper, numpy_helper

    channels = {v.name: v.type.tensor_type.shape.dim[1].dim_value
                for v in [*model.graph.value_info, *model.graph.input]
                if len(v.type.tensor_type.shape.dim) == 4}
    reaches_conv = _reaches_conv(model.graph)
    nodes, done = [], 0
    for n in model.graph.node:
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        pads = list(a.get("pads", [0, 0, 0, 0]))
        # a window always divides by kh*kw: padding counted (or none), no partial windows, no dilation
        plain = (len(a.get("kernel_shape", [])) == 2 and (a.get("count_include_pad", 0) == 1 or not any(pads))
                 and not a.get("ceil_mode", 0) and all(d == 1 for d in a.get("dilations", [1, 1]))
                 and a.get("auto_pad", b"NOTSET") == b"NOTSET")
        c = channels.get(n.input[0], 0) if n.input else 0
        if n.op_type != "AveragePool" or not plain or c <= 0 or _in_head(n.name) or not reaches_conv(n):
            nodes.append(n)
            continue
        kh, kw = a["kernel_shape"]
        weight = numpy_helper.from_array(np.full((c, 1, kh, kw), 1.0 / (kh * kw), np.float32),
                                         f"{n.name}/depthwise_weight")
        model.graph.initializer.append(weight)
        nodes.append(helper.make_node("Conv", [n.input[0], weight.name], list(n.output), name=n.name, group=c,
                                      kernel_shape=[kh, kw], strides=list(a.get("strides", [1, 1])), pads=pads))
        done += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return done
