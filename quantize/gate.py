"""Score FP32 and INT8 artifacts on the same inputs, recalibrate INT8 outputs from good images, and gate.

The gate's bounds are defined here once; `edge-quantize` and `edge-deploy` both take their defaults from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# the device's own backends score the artifacts (the gate measures the code the device runs): a runtime seam,
# not contract material, so the one import from edge/ beyond the contract
from edge.backends import create_backend
from edge.contract import OutputAffine

__all__ = ["MAX_DROP", "MAX_FAR_INCREASE", "gate_failure", "gate_report", "gate_verdict", "plot_scores",
           "recalibrate", "score_all", "score_timed", "spearman"]

MAX_DROP = 0.005  # default --max-drop: largest image-AUROC drop, and AUPRO drop where masks exist
# default --max-far-increase: how much the false-alarm rate on good images may rise at the threshold the bundle
# uses. Four times the default 0.5 % target; on a gate set with fewer than 50 good images one extra false
# alarm is already more, which the failure message says.
MAX_FAR_INCREASE = 0.02


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
                int8: tuple[np.ndarray, np.ndarray], thr_fp32: float, thr_int8: float, max_drop: float = MAX_DROP,
                max_far_increase: float = MAX_FAR_INCREASE) -> dict[str, Any]:
    """Image-AUROC drop, AUPRO drop, Spearman of scores, false-alarm change at the thresholds, pass/fail.

    Checked: the image-AUROC drop and (where masks exist) the AUPRO drop against max_drop, and the rise of the
    false-alarm rate on good images, each model at its own threshold (INT8: the one the bundle uses), against
    max_far_increase. `failed` lists the checks that did not hold; `passed` is true when none failed.
    """
    from training.metrics import aupro, auroc, rates_at_threshold

    (fm, fs), (qm, qs) = fp32, int8
    a_f, a_q = auroc(labels, fs), auroc(labels, qs)
    n_good = int((labels == 0).sum())
    rep: dict[str, Any] = {
        "n_images": int(len(labels)), "n_defective": int(labels.sum()), "n_good": n_good,
        "image_auroc_fp32": round(a_f, 5), "image_auroc_int8": round(a_q, 5),
        "image_auroc_drop": round(a_f - a_q, 5),
        "spearman_scores": round(spearman(fs, qs), 5),
        "max_abs_map_diff": round(float(np.abs(fm - qm).max()), 5),
    }
    checks = {"image_auroc_drop": (a_f - a_q, max_drop)}
    if masks is not None and masks.any():
        p_f, p_q = aupro(masks, fm), aupro(masks, qm)
        rep.update({"aupro_fp32": round(p_f, 5), "aupro_int8": round(p_q, 5), "aupro_drop": round(p_f - p_q, 5)})
        checks["aupro_drop"] = (p_f - p_q, max_drop)
    r_f = rates_at_threshold(labels, fs, thr_fp32)
    r_q = rates_at_threshold(labels, qs, thr_int8)
    rep.update({
        "false_alarm_rate_fp32": r_f["false_alarm_rate"], "false_alarm_rate_int8": r_q["false_alarm_rate"],
        "false_alarm_rate_change": round(r_q["false_alarm_rate"] - r_f["false_alarm_rate"], 5) if n_good else None,
        "miss_rate_fp32": r_f["miss_rate"], "miss_rate_int8": r_q["miss_rate"],
    })
    if n_good:
        checks["false_alarm_rate_change"] = (r_q["false_alarm_rate"] - r_f["false_alarm_rate"], max_far_increase)
    else:
        rep["note"] = "no good images in the gate set: the false-alarm change was not measured"
    # a tiny tolerance: rates are ratios of counts, and a bound equal to the change passes
    failed = [k for k, (v, bound) in checks.items() if v > bound + 1e-9]
    rep.update({"max_drop": max_drop, "max_far_increase": max_far_increase, "checked": list(checks),
                "failed": failed, "passed": not failed})
    return rep


def gate_failure(rep: dict[str, Any]) -> str:
    """One line for a failed gate: which checks failed, by how much, what one image is worth here, and the fix."""
    n_good, n_bad = rep.get("n_good", rep["n_images"] - rep["n_defective"]), rep["n_defective"]
    parts, fixes = [], []
    if "image_auroc_drop" in rep["failed"]:
        pair = 1 / max(n_good * n_bad, 1)
        parts.append(f"image-AUROC drop {rep['image_auroc_drop']} > max {rep['max_drop']} (one swapped "
                     f"good/defective pair is {pair:.3g} on these {n_good} good and {n_bad} defective images)")
        fixes.append("--max-drop")
    if "aupro_drop" in rep["failed"]:
        parts.append(f"AUPRO drop {rep['aupro_drop']} > max {rep['max_drop']}")
        if "--max-drop" not in fixes:
            fixes.append("--max-drop")
    if "false_alarm_rate_change" in rep["failed"]:
        parts.append(f"false-alarm rate at the bundle's threshold {rep['false_alarm_rate_fp32']:.1%} (FP32) -> "
                     f"{rep['false_alarm_rate_int8']:.1%} (INT8), up {rep['false_alarm_rate_change']:.1%} > max "
                     f"{rep['max_far_increase']:.1%} (one false alarm is {1 / n_good:.1%} of the {n_good} good "
                     f"image{'s' if n_good != 1 else ''} here)")
        fixes.append("--max-far-increase")
    return (f"gate failed: {'; '.join(parts)}; fix: add test images, accept it with {' / '.join(fixes)}, "
            "or deploy FP32 (edge-deploy --precision fp32)")


def gate_verdict(rep: dict[str, Any]) -> str:
    """The gate's outcome in a few words, as gate.png's heading: PASSED, or FAILED and which checks."""
    if rep["passed"]:
        return f"gate PASSED ({', '.join(rep['checked'])} within bounds)"
    return f"gate FAILED: {', '.join(rep['failed'])} over the bound"


def plot_scores(fs: np.ndarray, qs: np.ndarray, labels: np.ndarray, thr_f: float, thr_q: float, out: Path, title: str,
                rep: dict[str, Any] | None = None) -> None:
    """Scatter of INT8 vs FP32 image scores with both thresholds, headed by the gate's verdict (rep)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5.8))
    ax.scatter(fs[labels == 0], qs[labels == 0], s=12, c="tab:green", label="good")
    ax.scatter(fs[labels == 1], qs[labels == 1], s=12, c="tab:red", label="defective")
    lo, hi = float(min(fs.min(), qs.min())), float(max(fs.max(), qs.max()))
    ax.plot([lo, hi], [lo, hi], "k:", lw=0.8)
    ax.axvline(thr_f, color="gray", ls="--", lw=0.8, label="FP32 threshold")
    ax.axhline(thr_q, color="k", ls="--", lw=0.8, label="INT8 threshold")
    ax.set(xlabel="FP32 score", ylabel="INT8 score (recalibrated)", title=title)
    ax.legend(fontsize=8)
    meta = {}
    if rep is not None:
        verdict = gate_verdict(rep)
        fig.suptitle(verdict.replace(" (", "\n(").replace(": ", ":\n"), fontsize=9, fontweight="bold",
                     color="tab:green" if rep["passed"] else "tab:red")
        meta["Description"] = verdict
    fig.tight_layout()
    fig.savefig(out, dpi=110, metadata=meta)
    plt.close(fig)
