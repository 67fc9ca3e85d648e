"""The one post-processing every backend shares: output recalibration, threshold -> verdict, defect region."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.contract.io import Prediction
from edge.errors import FrameError

__all__ = ["Judgement", "judge"]


@dataclass(frozen=True)
class Judgement:
    """Outcome of one scored frame: ng when score > threshold; area and box of the map above threshold."""

    outcome: str
    score: float
    threshold: float
    area_fraction: float
    bbox: tuple[int, int, int, int] | None  # x0, y0, x1, y1 in the map's pixel grid


def judge(p: Prediction, threshold: float) -> Judgement:
    """Verdict of one prediction; a non-finite score is a scoring fault, never `ok`."""
    if not np.isfinite(p.score):
        raise FrameError(f"model returned a non-finite score ({p.score}): the runtime or model is faulty")
    above = p.anomaly_map > threshold
    bbox = None
    if above.any():
        ys, xs = np.nonzero(above)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    outcome = "ng" if p.score > threshold else "ok"
    return Judgement(outcome, float(p.score), float(threshold), float(above.mean()), bbox)
