"""Good images for calibration and the held-out gate set, shared by every runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from edge.imaging import load_image, load_input, to_input
from quantize.errors import QuantizeError

__all__ = ["CalibrationReader", "GateSet", "build_sets"]


class CalibrationReader:
    """Yields {"image": float32 1x3xSxS} from good images only; ORT's CalibrationDataReader protocol."""

    def __init__(self, inputs: list[np.ndarray]) -> None:
        if not inputs:
            raise QuantizeError("no good images for calibration: pass --calib-dir with good images of the product")
        self.inputs = inputs
        self._it: Iterator[np.ndarray] = iter(inputs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {"image": x}

    def rewind(self) -> None:
        self._it = iter(self.inputs)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Yield only inputs[start_index:end_index] next (ORT's strided calibration)."""
        self._it = iter(self.inputs[start_index:end_index])

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class GateSet:
    """Labelled inputs for the gate: labels (0 good, 1 defect) and masks where known."""

    inputs: list[np.ndarray]
    labels: np.ndarray
    masks: np.ndarray | None
    origin: str


def _paste_defects(goods: list[np.ndarray], size: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Synthetic defects on good images: blobs, scratches and foreign patches, with masks."""
    rng = np.random.default_rng(seed)
    out, masks = [], []
    for i, rgb in enumerate(goods):
        img = Image.fromarray(rgb).resize((size, size), Image.BILINEAR)
        mask = Image.new("L", (size, size), 0)
        d, dm = ImageDraw.Draw(img), ImageDraw.Draw(mask)
        cx, cy = rng.uniform(0.2, 0.8, size=2) * size
        r = rng.uniform(0.04, 0.1) * size
        kind = i % 3
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        if kind == 0:
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
            dm.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        elif kind == 1:
            x1, y1 = cx + rng.uniform(-3, 3) * r, cy + rng.uniform(-3, 3) * r
            w = max(2, size // 80)
            d.line([cx, cy, x1, y1], fill=colour, width=w)
            dm.line([cx, cy, x1, y1], fill=255, width=w + 2)
        else:
            other = Image.fromarray(goods[(i + 1) % len(goods)]).resize((size, size)).rotate(90)
            box = [int(cx - r), int(cy - r), int(cx + r), int(cy + r)]
            patch = other.crop(box).filter(ImageFilter.GaussianBlur(1))
            img.paste(patch, box[:2])
            dm.rectangle(box, fill=255)
        out.append(np.asarray(img))
        masks.append(np.asarray(mask) > 0)
    return out, np.stack(masks)


def build_sets(meta: dict, calib_dir: Path | None, max_calib: int = 64, seed: int = 0) -> tuple[CalibrationReader, list[np.ndarray], GateSet]:
    """Calibration reader (train good images or calib_dir), recalibration inputs (held-out good) and gate set.

    The gate set is the labelled test set when the dataset has one; otherwise held-out good images plus
    synthetic defects pasted onto them.
    """
    from training.data import open_dataset, load_mask

    size = int(meta["size_px"])
    if not meta.get("dataset"):
        raise QuantizeError("run metadata names no dataset: pass --data DIR")
    data = open_dataset(meta["dataset"], seed=seed)
    if calib_dir is not None:
        from training.data import list_images

        calib_paths = list_images(calib_dir)
        if not calib_paths:
            raise QuantizeError(f"{calib_dir}: no images for calibration")
    else:
        calib_paths = [s.path for s in data.train]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.permutation(len(calib_paths))[:max_calib])
    calib = CalibrationReader([load_input(calib_paths[i], size) for i in pick])
    held_out = [load_input(s.path, size) for s in data.val]
    if any(s.label == 1 for s in data.test):
        inputs = [load_input(s.path, size) for s in data.test]
        labels = np.array([s.label for s in data.test])
        masks = None
        if data.has_masks:
            masks = np.stack([load_mask(s.masks, size) if s.masks else np.zeros((size, size), bool) for s in data.test])
        gate = GateSet(inputs, labels, masks, "labelled test set")
    else:
        goods = [load_image(s.path, size_hint=size) for s in data.val]
        defects, dmasks = _paste_defects(goods, size, seed)
        inputs = held_out + [to_input(d, size) for d in defects]
        labels = np.r_[np.zeros(len(held_out), int), np.ones(len(defects), int)]
        masks = np.concatenate([np.zeros((len(held_out), size, size), bool), dmasks])
        gate = GateSet(inputs, labels, masks, "held-out good images + synthetic pasted defects")
    return calib, held_out, gate
