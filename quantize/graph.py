"""Graph facts quantization decisions need: which convolutions are final (feed the distance directly), and
which nodes form the scoring head (distance, normalisation, upsampling between the branches)."""

from __future__ import annotations

from pathlib import Path

import onnx

__all__ = ["final_convs", "head_nodes", "input_convs"]


def final_convs(path: Path) -> list[str]:
    """Conv nodes with no Conv downstream: the last layer of each branch (teacher, student, AE, whitening)."""
    g = onnx.load(str(path)).graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    memo: dict[str, bool] = {}

    def reaches_conv(node: onnx.NodeProto) -> bool:
        if node.name in memo:
            return memo[node.name]
        memo[node.name] = False
        hit = False
        for out in node.output:
            for c in consumers.get(out, []):
                if c.op_type == "Conv" or reaches_conv(c):
                    hit = True
                    break
            if hit:
                break
        memo[node.name] = hit
        return hit

    return [n.name for n in g.node if n.op_type == "Conv" and not reaches_conv(n)]


def input_convs(path: Path) -> list[str]:
    """Conv nodes with no Conv upstream: the first layer of each branch, which reads the image itself."""
    g = onnx.load(str(path)).graph
    producer = {o: n for n in g.node for o in n.output}
    memo: dict[str, bool] = {}

    def after_conv(tensor: str) -> bool:
        node = producer.get(tensor)
        if node is None:
            return False  # a graph input or an initializer
        if node.name not in memo:
            memo[node.name] = False  # a cycle cannot occur in ONNX; this only stops re-walking shared paths
            memo[node.name] = node.op_type == "Conv" or any(after_conv(i) for i in node.input if i)
        return memo[node.name]

    return [n.name for n in g.node if n.op_type == "Conv" and not after_conv(n.input[0])]


def head_nodes(path: Path) -> list[str]:
    """Nodes of the top-level forward (/model/Sub, /model/Div, ...), not of a branch module (/model/student/...).

    That is where the anomaly signal is a small difference of large activations, so the 'all ops' scope
    keeps them float while every branch is quantized end to end (Relu/pooling fused, fewer Q/DQ hops).
    """
    out = []
    for n in onnx.load(str(path)).graph.node:
        parts = n.name.split("/")
        if len(parts) == 3 and parts[1] == "model" and n.op_type != "Constant":
            out.append(n.name)
    return out
