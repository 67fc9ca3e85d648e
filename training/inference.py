"""Images in, maps and scores out with the PyTorch model: the contract's preprocessing, shared by training,
evaluation and the benches."""

from __future__ import annotations

import numpy as np
import torch

from training.data import Sample, load_rgb
from training.models import AnomalyModel

__all__ = ["load_images", "score_images"]


def load_images(samples: list[Sample], size_px: int) -> torch.Tensor:
    """Decode samples to a float tensor Nx3xSxS in [0, 1] (the contract's preprocessing)."""
    arr = np.stack([load_rgb(s.path, size_px) for s in samples])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def score_images(model: AnomalyModel, images: torch.Tensor,
                 batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps NxSxS and scores N of images with the PyTorch model."""
    model.eval()
    maps, scores = [], []
    for i in range(0, len(images), batch_size):
        m, s = model(images[i : i + batch_size])
        maps.append(m[:, 0].numpy())
        scores.append(s.numpy())
    return np.concatenate(maps), np.concatenate(scores)
