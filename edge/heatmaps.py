"""Overlays of ng frames on the box (state_dir/heatmaps/<verdict id>.png), the oldest deleted beyond a bound."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["save_overlay"]


def save_overlay(folder: Path, vid: str, rgb: np.ndarray, amap: np.ndarray, threshold: float, max_files: int) -> str:
    """The frame with the anomaly map in red (full red at twice the threshold); returns the file's path."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    h, w = rgb.shape[:2]
    norm = np.clip(amap / max(threshold * 2, 1e-6), 0, 1)
    heat = Image.fromarray((norm * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    red = np.zeros((h, w, 3), np.uint8)
    red[..., 0] = np.asarray(heat)
    alpha = (np.asarray(heat, dtype=np.float32)[..., None] / 255.0) * 0.6
    over = (rgb * (1 - alpha) + red * alpha).astype(np.uint8)
    path = folder / f"{vid}.png"
    Image.fromarray(over).save(path)
    files = sorted(folder.glob("*.png"), key=lambda p: p.stat().st_mtime)
    for old in files[: max(0, len(files) - max_files)]:
        old.unlink(missing_ok=True)
    return str(path)
