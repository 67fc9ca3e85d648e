"""What a person reads: ROC curves, score histograms with the thresholds, heatmap overlays of the misses and
false alarms, and how far a threshold from few good images can be trusted."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from training.metrics import roc_curve

__all__ = ["misses_and_false_alarms", "threshold_basis", "write_plots"]


def threshold_basis(n_good: int, far: float) -> dict[str, Any]:
    """How much a threshold set on n_good good images at target false-alarm rate `far` can say.

    On n good images the false-alarm rate moves in steps of 1/n; a target below one step puts the threshold at
    about the highest good score, and nothing measured here shows whether the target holds. `warning` is None
    when n_good reaches 1/far.
    """
    resolution = 1.0 / max(n_good, 1)
    needed = math.ceil(1.0 / far - 1e-9) if far > 0 else None
    warning = None
    if needed is not None and n_good < needed:
        warning = (f"threshold from only {n_good} good image{'s' if n_good != 1 else ''}: false alarms are "
                   f"measured in steps of {resolution:.1%}, too coarse for the {far:.2%} target (that needs "
                   f"{needed} or more held-out good images); expect more false alarms than the target")
    return {"n_good_images": n_good, "false_alarm_rate_target": far,
            "false_alarm_resolution": round(resolution, 6), "good_images_needed": needed, "warning": warning}


def misses_and_false_alarms(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the defective images scored good (misses) and the good images scored NG (false alarms) at
    `threshold` (NG = score > threshold, as the device decides), each ordered from the most wrong."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    miss = np.flatnonzero(y & (s <= threshold))
    false_alarm = np.flatnonzero(~y & (s > threshold))
    return miss[np.argsort(s[miss], kind="stable")], false_alarm[np.argsort(-s[false_alarm], kind="stable")]


def _worst_panels(scores: np.ndarray, labels: np.ndarray, threshold: float, n: int) -> tuple[list[tuple[int, str]], str]:
    """What worst.png shows: up to n misses and false alarms (half each when both exist), or, when the threshold
    makes no error, the closest calls (lowest-scored defects, highest-scored good images); and its heading."""
    miss, fa = misses_and_false_alarms(scores, labels, threshold)
    if len(miss) or len(fa):
        k_miss = min(len(miss), max(n - len(fa), n // 2))
        k_fa = min(len(fa), n - k_miss)
        panels = [(int(i), "MISS") for i in miss[:k_miss]] + [(int(i), "FALSE ALARM") for i in fa[:k_fa]]
        counts = f"{len(miss)} miss{'es' if len(miss) != 1 else ''} and {len(fa)} false alarm{'s' if len(fa) != 1 else ''}"
        return panels, f"{counts} at threshold {threshold:.3f} (showing {len(panels)}, most wrong first)"
    y = np.asarray(labels).astype(bool)
    bad = np.flatnonzero(y)[np.argsort(scores[y], kind="stable")]
    good = np.flatnonzero(~y)[np.argsort(-scores[~y], kind="stable")]
    k_bad = min(len(bad), max(n - len(good), n // 2))
    panels = [(int(i), "closest catch") for i in bad[:k_bad]] + [(int(i), "closest good") for i in good[:n - k_bad]]
    return panels, f"no misses or false alarms at threshold {threshold:.3f}: the closest calls"


def write_plots(arrays: dict[str, np.ndarray], threshold: float, out: Path, title: str, n_worst: int = 6,
                other_thresholds: dict[str, float] | None = None) -> list[str]:
    """Write roc.png, histogram.png and worst.png under out/ and return their file names.

    Args:
        threshold: the model's own threshold; misses and false alarms are counted at it.
        other_thresholds: further thresholds a bundle of this run uses (e.g. {"onnxruntime INT8": 0.12}),
            drawn on the histogram.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    scores, labels, kinds = arrays["scores"], arrays["labels"], arrays["kinds"]
    others = other_thresholds or {}
    written = []

    fig, ax = plt.subplots(figsize=(5, 5))
    groups = [("all", labels == 1)] + [(k, kinds == k) for k in sorted(set(kinds[labels == 1]))]
    for name, pos in groups:
        sel = (labels == 0) | pos
        if pos.any() and (labels[sel] == 0).any():
            fpr, tpr = roc_curve(labels[sel], scores[sel])
            ax.plot(fpr, tpr, label=f"{name} (AUROC {np.trapezoid(tpr, fpr):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=f"ROC - {title}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=110)
    plt.close(fig)
    written.append("roc.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    lines = [threshold, *others.values()]
    lo, hi = float(min(scores.min(), *lines)), float(max(scores.max(), *lines))
    # every score equal (a model that learnt nothing): still a plot
    bins = np.linspace(lo, max(hi, lo + 1e-6 * max(1.0, abs(lo))), 40)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="good", color="tab:green")
    for k in sorted(set(kinds[labels == 1])):
        ax.hist(scores[kinds == k], bins=bins, alpha=0.5, label=k)
    ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.3f}")
    for (name, thr), style in zip(others.items(), [":", "-.", (0, (1, 3)), (0, (5, 2))] * 4):
        ax.axvline(thr, color="tab:purple", ls=style, label=f"{name} bundle threshold {thr:.3f}")
    ax.set(xlabel="image score", ylabel="images", title=f"Scores - {title}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    meta = {"Description": "thresholds: " + ", ".join(f"{k} {v:.6g}" for k, v in {"model": threshold, **others}.items())}
    fig.savefig(out / "histogram.png", dpi=110, metadata=meta)
    plt.close(fig)
    written.append("histogram.png")

    panels, heading = _worst_panels(scores, labels, threshold, n_worst)
    n_cols = max(len(panels), 1)
    fig, axes = plt.subplots(2, n_cols, figsize=(max(2.4 * n_cols, 6.0), 5.4), squeeze=False)
    vmax = max(float(arrays["maps"].max()), threshold)
    for j, (i, what) in enumerate(panels):
        img = arrays["images"][i].transpose(1, 2, 0)
        axes[0, j].imshow(img)
        if "masks" in arrays and arrays["masks"][i].any():
            axes[0, j].contour(arrays["masks"][i], levels=[0.5], colors="red", linewidths=0.8)
        axes[0, j].set_title(f"{what}: {kinds[i]}\nscore {scores[i]:.3f}", fontsize=8,
                             color="tab:red" if what in ("MISS", "FALSE ALARM") else "k")
        axes[1, j].imshow(img)
        axes[1, j].imshow(arrays["maps"][i], cmap="jet", alpha=0.5, vmin=0, vmax=vmax)
    for a in axes.ravel():
        a.axis("off")
    fig.suptitle(f"{title} - {heading}\n(red outline: ground truth)", fontsize=9)
    fig.tight_layout()
    shown = "; ".join(f"{what} {i}" for i, what in panels)
    fig.savefig(out / "worst.png", dpi=110, metadata={"Description": f"{heading}. shown (test index): {shown}"})
    plt.close(fig)
    written.append("worst.png")
    return written
