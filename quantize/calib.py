"""Good images for calibration and the held-out gate set, shared by every runtime."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from edge.contract import ModelCard, load_image, load_input, to_input
from quantize.errors import QuantizeError

if TYPE_CHECKING:
    from training.data import Dataset

__all__ = ["CalibrationReader", "GateSet", "build_sets", "images_fingerprint"]


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


def _open(card: ModelCard, calib_dir: Path | None, max_calib: int, seed: int) -> tuple[Dataset, list[Path]]:
    """The run's dataset and the calibration image paths (a seeded pick of at most max_calib)."""
    from training.data import list_images, open_dataset

    if not card.dataset:
        raise QuantizeError("run metadata names no dataset: pass --data DIR")
    data = open_dataset(card.dataset, seed=seed)
    if calib_dir is not None:
        calib_paths = list_images(calib_dir)
        if not calib_paths:
            raise QuantizeError(f"{calib_dir}: no images for calibration")
    else:
        calib_paths = [s.path for s in data.train]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.permutation(len(calib_paths))[:max_calib])
    return data, [calib_paths[i] for i in pick]


def images_fingerprint(card: ModelCard, calib_dir: Path | None, max_calib: int = 64, seed: int = 0) -> str:
    """SHA-256 over the path and contents of every image (and mask) build_sets would read.

    Recorded in quant.json, so an INT8 artifact is reused only while its calibration and gate images are the same.
    """
    data, calib_paths = _open(card, calib_dir, max_calib, seed)
    h = hashlib.sha256()
    files = [("calib", p) for p in calib_paths] + [("val", s.path) for s in data.val]
    files += [(f"test{s.label}", p) for s in data.test for p in (s.path, *s.masks)]
    for role, p in files:
        h.update(f"{role}:{p}:{hashlib.sha256(Path(p).read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def build_sets(card: ModelCard, calib_dir: Path | None, max_calib: int = 64, seed: int = 0) -> tuple[CalibrationReader, list[np.ndarray], GateSet]:
    """Calibration reader (train good images or calib_dir), recalibration inputs (held-out good) and gate set.

    The gate set is the labelled test set when the dataset has one; otherwise held-out good images plus
    synthetic defects pasted onto them.
    """
    from training.data import load_mask

    size = card.size_px
    data, calib_paths = _open(card, calib_dir, max_calib, seed)
    calib = CalibrationReader([load_input(p, size) for p in calib_paths])
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
        from training.selection import structural_defects

        defects, dmasks = structural_defects(goods, size, seed)
        inputs = held_out + [to_input(d, size) for d in defects]
        labels = np.r_[np.zeros(len(held_out), int), np.ones(len(defects), int)]
        masks = np.concatenate([np.zeros((len(held_out), size, size), bool), dmasks])
        gate = GateSet(inputs, labels, masks, "held-out good images + synthetic pasted defects")
    return calib, held_out, gate
