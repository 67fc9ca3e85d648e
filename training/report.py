"""What a person reads: ROC curves, score histograms with the threshold, heatmap overlays of the worst images,
and how far a threshold from few good images can be trusted."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from training.metrics import roc_curve

__all__ = ["threshold_basis", "write_plots"]


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


def write_plots(arrays: dict[str, np.ndarray], threshold: float, out: Path, title: str, n_worst: int = 6) -> list[str]:
    """Write roc.png, histogram.png and worst.png under out/ and return their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    scores, labels, kinds = arrays["scores"], arrays["labels"], arrays["kinds"]
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
    bins = np.linspace(min(scores.min(), threshold), max(scores.max(), threshold), 40)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="good", color="tab:green")
    for k in sorted(set(kinds[labels == 1])):
        ax.hist(scores[kinds == k], bins=bins, alpha=0.5, label=k)
    ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="image score", ylabel="images", title=f"Scores - {title}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "histogram.png", dpi=110)
    plt.close(fig)
    written.append("histogram.png")

    order = np.argsort(-scores)[:n_worst]
    fig, axes = plt.subplots(2, len(order), figsize=(2.4 * len(order), 5), squeeze=False)
    vmax = max(float(arrays["maps"].max()), threshold)
    for j, i in enumerate(order):
        img = arrays["images"][i].transpose(1, 2, 0)
        axes[0, j].imshow(img)
        if "masks" in arrays and arrays["masks"][i].any():
            axes[0, j].contour(arrays["masks"][i], levels=[0.5], colors="red", linewidths=0.8)
        axes[0, j].set_title(f"{kinds[i]}\nscore {scores[i]:.3f}", fontsize=8)
        axes[1, j].imshow(img)
        axes[1, j].imshow(arrays["maps"][i], cmap="jet", alpha=0.5, vmin=0, vmax=vmax)
        for a in axes[:, j]:
            a.axis("off")
    fig.suptitle(f"Worst-scored test images - {title} (red: ground truth)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "worst.png", dpi=110)
    plt.close(fig)
    written.append("worst.png")
    return written
