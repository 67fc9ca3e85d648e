"""The ONNX I/O contract, version 1 (bump on any change): input `image` float32 1x3xSxS, RGB in [0, 1], resized
bilinearly; outputs `anomaly_map` float32 1x1xSxS (normalised: 0.1 is a typical good image's high end) and `score`
float32 [1], the image score pooled from the map by the model's own rule (max, mean or top-k mean)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

__all__ = ["CONTRACT_VERSION", "INPUT_NAME", "OUTPUT_NAMES", "OutputAffine", "Prediction", "input_spec",
           "output_spec"]

CONTRACT_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "score")


def input_spec(size_px: int) -> dict[str, Any]:
    return {"name": INPUT_NAME, "dtype": "float32", "shape": [1, 3, size_px, size_px], "colour_order": "RGB",
            "range": [0.0, 1.0], "resize": "bilinear"}


def output_spec(size_px: int) -> dict[str, Any]:
    return {"anomaly_map": {"dtype": "float32", "shape": [1, 1, size_px, size_px]},
            "score": {"dtype": "float32", "shape": [1]}}


@dataclass
class Prediction:
    """Outputs of the contract: the normalised anomaly map (HxW float32) and the raw image score."""

    anomaly_map: np.ndarray
    score: float


class OutputAffine(BaseModel):
    """map' = scale * map + offset (and the same for the score): re-anchors an INT8 artifact's outputs on the
    FP32 model's; identity for FP32 artifacts. Written by quantize (quant.json), carried by the bundle manifest
    and applied on the device."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    scale: float = 1.0
    offset: float = 0.0

    def apply(self, p: Prediction) -> Prediction:
        if self.scale == 1.0 and self.offset == 0.0:
            return p
        return Prediction(p.anomaly_map * self.scale + self.offset, p.score * self.scale + self.offset)
