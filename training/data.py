"""Dataset readers: a plain folder of good images, the MVTec AD layout and the MVTec LOCO AD layout.

Every reader returns a `Dataset` of three splits: `train` (good only), `val` (good only, held out for map
normalisation and thresholds) and `test` (labelled, with pixel masks where the layout has them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from edge.contract import FrameError, load_image, resize_rgb
from training.errors import DatasetError

__all__ = ["Sample", "Dataset", "open_dataset", "load_rgb", "load_mask", "IMAGE_SUFFIXES", "list_images"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Sample:
    """One image: its path, label (0 good, 1 anomalous), kind (good/structural/logical/defect name), masks."""

    path: Path
    label: int
    kind: str = "good"
    masks: tuple[Path, ...] = ()


@dataclass
class Dataset:
    """Train/val/test samples of one product, with the layout they were read from."""

    root: Path
    layout: str
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] = field(default_factory=list)

    def fingerprint(self) -> str:
        """SHA-256 over the relative paths and sizes of the training and validation images."""
        h = hashlib.sha256()
        for s in self.train + self.val:
            rel = s.path.relative_to(self.root) if s.path.is_relative_to(self.root) else s.path
            h.update(f"{rel}:{s.path.stat().st_size}\n".encode())
        return h.hexdigest()

    @property
    def has_masks(self) -> bool:
        return any(s.masks for s in self.test if s.label == 1)


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _require_images(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder missing; expected {what}")
    files = list_images(folder)
    if not files:
        raise DatasetError(
            f"{folder}: no images found; expected {what} ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return files


def _holdout(files: list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Split good images into train and a held-out validation part (at least one image each)."""
    if len(files) < 2:
        raise DatasetError(
            f"{files[0].parent}: only {len(files)} good image; need at least 2 (one to train, one held out)"
        )
    order = np.random.default_rng(seed).permutation(len(files))
    n_val = min(max(1, round(len(files) * fraction)), len(files) - 1)
    val = sorted(files[i] for i in order[:n_val])
    train = sorted(files[i] for i in order[n_val:])
    return train, val


def _good(paths: list[Path]) -> list[Sample]:
    return [Sample(p, 0) for p in paths]


def _read_folder(root: Path, val_fraction: float, seed: int) -> Dataset:
    good_dir = root / "good" if (root / "good").is_dir() else root
    train, val = _holdout(_require_images(good_dir, "good images of the product"), val_fraction, seed)
    test: list[Sample] = []
    test_dir = root / "test"
    if test_dir.is_dir():
        for sub in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            label = 0 if sub.name == "good" else 1
            test += [Sample(p, label, "good" if label == 0 else sub.name) for p in list_images(sub)]
    return Dataset(root, "folder", _good(train), _good(val), test)


def _read_mvtec(root: Path, val_fraction: float, seed: int) -> Dataset:
    train, val = _holdout(_require_images(root / "train" / "good", "MVTec AD train/good images"), val_fraction, seed)
    test: list[Sample] = []
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"{test_dir}: folder missing; MVTec AD layout expects test/<defect>/ folders")
    for sub in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        for img in list_images(sub):
            if sub.name == "good":
                test.append(Sample(img, 0))
                continue
            mask = root / "ground_truth" / sub.name / f"{img.stem}_mask.png"
            if not mask.is_file():
                raise DatasetError(f"{mask}: mask missing for {img}; MVTec AD expects ground_truth/<defect>/<name>_mask.png")
            test.append(Sample(img, 1, sub.name, (mask,)))
    return Dataset(root, "mvtec", _good(train), _good(val), test)


def _read_loco(root: Path) -> Dataset:
    train = _require_images(root / "train" / "good", "MVTec LOCO train/good images")
    val = _require_images(root / "validation" / "good", "MVTec LOCO validation/good images")
    test: list[Sample] = [Sample(p, 0) for p in list_images(root / "test" / "good")] if (root / "test" / "good").is_dir() else []
    for kind, short in (("logical_anomalies", "logical"), ("structural_anomalies", "structural")):
        sub = root / "test" / kind
        if not sub.is_dir():
            continue
        for img in list_images(sub):
            mask_dir = root / "ground_truth" / kind / img.stem
            masks = tuple(list_images(mask_dir)) if mask_dir.is_dir() else ()
            if not masks:
                raise DatasetError(
                    f"{mask_dir}: no masks for {img}; MVTec LOCO expects ground_truth/{kind}/<image-id>/<k>.png"
                )
            test.append(Sample(img, 1, short, masks))
    return Dataset(root, "loco", _good(train), _good(val), test)


def open_dataset(root: str | Path, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Read a dataset, detecting its layout: MVTec LOCO AD, MVTec AD, or a plain folder of good images.

    Raises:
        DatasetError: the folder does not exist, holds no images, or a layout is incomplete.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    if (root / "validation" / "good").is_dir() and (root / "train" / "good").is_dir():
        return _read_loco(root)
    if (root / "train" / "good").is_dir():
        return _read_mvtec(root, val_fraction, seed)
    if (root / "train").is_dir():
        raise DatasetError(f"{root / 'train'}: has no good/ subfolder; MVTec layouts expect train/good/")
    return _read_folder(root, val_fraction, seed)


def load_rgb(path: Path, size_px: int) -> np.ndarray:
    """Load an image as RGB uint8 resized to the model's input size; a bad file names itself."""
    try:
        return resize_rgb(load_image(path, size_hint=size_px), size_px)
    except FrameError as err:
        raise DatasetError(str(err)) from err


def load_mask(paths: tuple[Path, ...], size_px: int) -> np.ndarray:
    """Merge one or more mask files (any non-zero pixel is anomalous) into a bool size_px x size_px array."""
    out = np.zeros((size_px, size_px), dtype=bool)
    for p in paths:
        with Image.open(p) as m:
            arr = np.asarray(m.convert("L").resize((size_px, size_px), Image.NEAREST))
        out |= arr > 0
    return out
