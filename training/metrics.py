"""Anomaly-detection metrics: ROC AUC (image and pixel), AUPRO to a false-positive limit, and
thresholds from good images at a target false-alarm rate."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["roc_curve", "auroc", "aupro", "threshold_at_far", "rates_at_threshold"]


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates over all distinct score thresholds (ties handled), starting at (0, 0)."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y = np.asarray(labels).astype(bool).ravel()
    if y.all() or not y.any():
        return float("nan")
    fpr, tpr = roc_curve(y, scores)
    return float(np.trapezoid(tpr, fpr))


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3, n_thresholds: int = 300) -> float:
    """Area under the per-region-overlap curve up to fpr_limit, normalised to [0, 1].

    Args:
        masks: N x H x W bool ground truth (good images have all-False masks).
        maps: N x H x W anomaly maps.
    """
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    if not masks.any():
        return float("nan")
    lo, hi = float(maps.min()), float(maps.max())
    # the last threshold flags every pixel, so the curve always reaches FPR 1
    thresholds = np.r_[np.linspace(hi, lo, n_thresholds - 1), -np.inf]
    neg = ~masks
    n_neg = max(int(neg.sum()), 1)
    # FPR per threshold from a histogram of normal-pixel scores
    neg_scores = np.sort(maps[neg])
    fpr = 1.0 - np.searchsorted(neg_scores, thresholds, side="right") / n_neg
    pro_sum = np.zeros(n_thresholds)
    n_regions = 0
    for m, a in zip(masks, maps):
        labelled, n = ndimage.label(m)
        for r in range(1, n + 1):
            region = np.sort(a[labelled == r])
            covered = 1.0 - np.searchsorted(region, thresholds, side="right") / region.size
            pro_sum += covered
            n_regions += 1
    pro = pro_sum / max(n_regions, 1)
    keep = fpr <= fpr_limit
    f, p = fpr[keep], pro[keep]
    # close the curve exactly at the limit by interpolating to the next point
    nxt = np.argmax(fpr > fpr_limit) if (fpr > fpr_limit).any() else None
    if nxt is not None and nxt > 0:
        f0, f1, p0, p1 = fpr[nxt - 1], fpr[nxt], pro[nxt - 1], pro[nxt]
        p_lim = p0 + (p1 - p0) * (fpr_limit - f0) / max(f1 - f0, 1e-12)
        f, p = np.r_[f, fpr_limit], np.r_[p, p_lim]
    f, p = np.r_[0.0, f], np.r_[0.0, p]
    return float(np.trapezoid(p, f) / fpr_limit)


def threshold_at_far(good_scores: np.ndarray, far: float) -> float:
    """Score threshold that flags about `far` of good images (linear-interpolated quantile of good scores).

    Uses good images only; with few images the quantile falls near the maximum, which keeps false alarms low.
    """
    s = np.asarray(good_scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("threshold needs at least one good-image score")
    if not 0.0 <= far < 1.0:
        raise ValueError(f"false-alarm rate must be in [0, 1), got {far}")
    return float(np.quantile(s, 1.0 - far))


def rates_at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """False-alarm rate on good images and miss rate on anomalous images for `score > threshold` = NG."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    ng = s > threshold
    far = float(ng[~y].mean()) if (~y).any() else float("nan")
    miss = float((~ng[y]).mean()) if y.any() else float("nan")
    return {"false_alarm_rate": far, "miss_rate": miss}
