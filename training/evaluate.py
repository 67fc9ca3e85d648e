"""Score a labelled test set and compute the report: image/pixel AUROC, AUPRO, per-kind AUROC, rates at
the good-image threshold."""

from __future__ import annotations

from typing import Any

import numpy as np

from training.data import Dataset, Sample, load_mask
from training.inference import load_images, score_images
from training.metrics import aupro, auroc, rates_at_threshold
from training.report import misses_and_false_alarms
from training.run import RunState

__all__ = ["evaluate", "pixel_masks"]


def _r(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 4)


def pixel_masks(test: list[Sample], size_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Defect masks of test images (NxSxS, empty for good images) and which images pixel metrics count:
    the good ones and the defects that have masks."""
    masks = np.stack([load_mask(t.masks, size_px) if t.masks else np.zeros((size_px, size_px), bool) for t in test])
    return masks, np.array([t.label == 0 or bool(t.masks) for t in test])


def evaluate(state: RunState, data: Dataset) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics on data.test and the arrays the plots need (scores, labels, kinds, maps, masks, images)."""
    s = state.model.size_px
    test = data.test
    if not test:
        return {"n_test": 0, "note": "no labelled test images; only the threshold was calibrated"}, {}
    images = load_images(test, s)
    maps, scores = score_images(state.model, images)
    labels = np.array([t.label for t in test])
    kinds = np.array([t.kind for t in test])
    report: dict[str, Any] = {
        "n_test": len(test),
        "n_good": int((labels == 0).sum()),
        "n_anomalous": int((labels == 1).sum()),
        "image_auroc": _r(auroc(labels, scores)),
        "threshold": state.threshold,
        **{k: _r(v) for k, v in rates_at_threshold(labels, scores, state.threshold).items()},
    }
    miss, false_alarm = misses_and_false_alarms(scores, labels, state.threshold)
    # the images to look at first (worst.png shows some of them), most wrong first
    report["misses"] = [str(test[i].path) for i in miss]
    report["false_alarms"] = [str(test[i].path) for i in false_alarm]
    per_kind = {}
    for k in sorted(set(kinds[labels == 1])):
        sel = (labels == 0) | (kinds == k)
        per_kind[str(k)] = _r(auroc(labels[sel], scores[sel]))
    report["image_auroc_by_kind"] = per_kind
    arrays: dict[str, np.ndarray] = {"scores": scores, "labels": labels, "kinds": kinds, "maps": maps,
                                     "images": images.numpy()}
    if data.has_masks:
        masks, with_mask = pixel_masks(test, s)
        m, a = masks[with_mask], maps[with_mask]
        report["pixel_auroc"] = _r(auroc(m.ravel(), a.ravel()))
        report["aupro_0.3"] = _r(aupro(m, a, 0.3))
        # Per kind (good images always included for the false-positive side), as LOCO reports localisation.
        good, k_mask = labels[with_mask] == 0, kinds[with_mask]
        report["aupro_by_kind"] = {str(k): _r(aupro(m[good | (k_mask == k)], a[good | (k_mask == k)], 0.3))
                                   for k in sorted(set(k_mask[~good]))}
        arrays["masks"] = masks
    return report, arrays
