"""The ONNX I/O contract, version 1 (bump on any change): input `image` float32 1x3xSxS, RGB in [0, 1], resized
bilinearly; outputs `anomaly_map` float32 1x1xSxS (normalised: 0.1 is a typical good image's high end) and `score`
float32 [1], the image score pooled from the map by the model's own rule (max, mean or top-k mean)."""

from __future__ import annotations

from typing import Any

__all__ = ["CONTRACT_VERSION", "INPUT_NAME", "OUTPUT_NAMES", "input_spec", "output_spec"]

CONTRACT_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "score")


def input_spec(size_px: int) -> dict[str, Any]:
    return {"name": INPUT_NAME, "dtype": "float32", "shape": [1, 3, size_px, size_px], "colour_order": "RGB",
            "range": [0.0, 1.0], "resize": "bilinear"}


def output_spec(size_px: int) -> dict[str, Any]:
    return {"anomaly_map": {"dtype": "float32", "shape": [1, 1, size_px, size_px]},
            "score": {"dtype": "float32", "shape": [1]}}
