"""Score FP32 and INT8 artifacts on the same inputs, recalibrate INT8 outputs from good images, and gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.backends import create_backend
from edge.postprocess import OutputAffine

__all__ = ["score_all", "score_timed", "spearman", "recalibrate", "gate_report", "plot_scores"]


def score_all(runtime: str, model: Path, inputs: list[np.ndarray], cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Maps NxSxS and scores N of inputs with the runtime's edge backend (the exact code the device runs)."""
    maps, scores, _ = score_timed(runtime, model, inputs, cache_dir)
    return maps, scores


def score_timed(runtime: str, model: Path, inputs: list[np.ndarray],
                cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """score_all plus the median batch-1 latency (ms) of those inferences (after the backend's warm-up run)."""
    import time

    backend = create_backend(runtime, model, "cpu", cache_dir)
    preds, t = [], []
    for x in inputs:
        t0 = time.perf_counter()
        preds.append(backend.infer(x))
        t.append(time.perf_counter() - t0)
    backend.close()
    return np.stack([p.anomaly_map for p in preds]), np.array([p.score for p in preds]), float(np.median(t) * 1e3)


def recalibrate(fp32_maps: np.ndarray, q_maps: np.ndarray) -> OutputAffine:
    """Affine that maps the quantized model's q0.9/q0.995 of good-image maps onto the FP32 model's.

    Quantization shifts and scales the anomaly signal; re-anchoring on good images keeps heatmaps and the
    threshold on the scale the model was trained for.
    """
    f_lo, f_hi = np.quantile(fp32_maps, [0.9, 0.995])
    q_lo, q_hi = np.quantile(q_maps, [0.9, 0.995])
    scale = float((f_hi - f_lo) / max(q_hi - q_lo, 1e-9))
    return OutputAffine(scale=scale, offset=float(f_lo - scale * q_lo))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two score vectors; 0 when either is constant (a collapsed INT8 graph ranks nothing)."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def gate_report(labels: np.ndarray, masks: np.ndarray | None, fp32: tuple[np.ndarray, np.ndarray],
                int8: tuple[np.ndarray, np.ndarray], thr_fp32: float, thr_int8: float, max_drop: float) -> dict[str, Any]:
    """Image-AUROC drop, AUPRO drop, Spearman of scores, false-alarm change at the threshold, pass/fail."""
    from training.metrics import aupro, auroc, rates_at_threshold

    (fm, fs), (qm, qs) = fp32, int8
    a_f, a_q = auroc(labels, fs), auroc(labels, qs)
    rep: dict[str, Any] = {
        "n_images": int(len(labels)), "n_defective": int(labels.sum()),
        "image_auroc_fp32": round(a_f, 5), "image_auroc_int8": round(a_q, 5),
        "image_auroc_drop": round(a_f - a_q, 5),
        "spearman_scores": round(spearman(fs, qs), 5),
        "max_abs_map_diff": round(float(np.abs(fm - qm).max()), 5),
    }
    if masks is not None and masks.any():
        p_f, p_q = aupro(masks, fm), aupro(masks, qm)
        rep.update({"aupro_fp32": round(p_f, 5), "aupro_int8": round(p_q, 5), "aupro_drop": round(p_f - p_q, 5)})
    r_f = rates_at_threshold(labels, fs, thr_fp32)
    r_q = rates_at_threshold(labels, qs, thr_int8)
    rep.update({
        "false_alarm_rate_fp32": r_f["false_alarm_rate"], "false_alarm_rate_int8": r_q["false_alarm_rate"],
        "false_alarm_rate_change": round(r_q["false_alarm_rate"] - r_f["false_alarm_rate"], 5),
        "miss_rate_fp32": r_f["miss_rate"], "miss_rate_int8": r_q["miss_rate"],
        "max_drop": max_drop, "passed": bool(a_f - a_q <= max_drop),
    })
    return rep


def plot_scores(fs: np.ndarray, qs: np.ndarray, labels: np.ndarray, thr_f: float, thr_q: float, out: Path, title: str) -> None:
    """Scatter of INT8 vs FP32 image scores with both thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(fs[labels == 0], qs[labels == 0], s=12, c="tab:green", label="good")
    ax.scatter(fs[labels == 1], qs[labels == 1], s=12, c="tab:red", label="defective")
    lo, hi = float(min(fs.min(), qs.min())), float(max(fs.max(), qs.max()))
    ax.plot([lo, hi], [lo, hi], "k:", lw=0.8)
    ax.axvline(thr_f, color="gray", ls="--", lw=0.8, label="FP32 threshold")
    ax.axhline(thr_q, color="k", ls="--", lw=0.8, label="INT8 threshold")
    ax.set(xlabel="FP32 score", ylabel="INT8 score (recalibrated)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
