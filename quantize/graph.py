"""Graph facts quantization decisions need: which convolutions are final (feed the distance directly)."""

from __future__ import annotations

from pathlib import Path

import onnx

__all__ = ["final_convs"]


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
