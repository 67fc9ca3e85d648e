"""Images unlike the product for EfficientAD's penalty loss, generated on the fly (no ImageNet download).

A mix of procedural natural-statistics images (1/f noise, dead leaves, stripes and gradients) and, when
scikit-image is installed, random crops of its bundled sample photos.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PenaltyImages", "PHOTOS"]

# scikit-image sample images that ship inside the wheel (the others are fetched on first use: never here)
PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "brick", "camera", "clock", "coins",
    "colorwheel", "grass", "gravel", "horse", "immunohistochemistry", "logo", "moon", "page", "retina", "text",
)


def _pink_noise(rng: np.random.Generator, s: int) -> np.ndarray:
    f = np.fft.fftfreq(s)
    r = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    r[0, 0] = 1.0
    out = []
    alpha = rng.uniform(1.0, 2.0)
    for _ in range(3):
        spec = (rng.normal(size=(s, s)) + 1j * rng.normal(size=(s, s))) / r**alpha
        img = np.real(np.fft.ifft2(spec))
        out.append((img - img.min()) / (np.ptp(img) + 1e-8))
    return np.stack(out, 0)


def _dead_leaves(rng: np.random.Generator, s: int) -> np.ndarray:
    img = np.zeros((3, s, s))
    yy, xx = np.mgrid[0:s, 0:s]
    for _ in range(int(rng.integers(30, 80))):
        r = s * rng.uniform(0.02, 0.25) ** 1.5 * 2
        cx, cy = rng.uniform(0, s, size=2)
        m = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
        img[:, m] = rng.uniform(0, 1, size=(3, 1))
    return img


def _stripes(rng: np.random.Generator, s: int) -> np.ndarray:
    yy, xx = np.mgrid[0:s, 0:s] / s
    ang = rng.uniform(0, np.pi)
    freq = rng.uniform(2, 30)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(ang) * xx + np.sin(ang) * yy))
    c0, c1 = rng.uniform(0, 1, size=(2, 3, 1, 1))
    return c0 * wave[None] + c1 * (1 - wave[None])


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """scikit-image's bundled photos as float 3xHxW, decoded once per process (empty without scikit-image)."""
    try:
        from skimage import data as skdata
    except ImportError:
        return ()
    out = []
    for name in PHOTOS:
        img = np.asarray(getattr(skdata, name)(), dtype=np.float32) / 255.0
        img = np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img[..., :3]
        out.append(img.transpose(2, 0, 1))
    return tuple(out)


class PenaltyImages:
    """Endless stream of penalty images as float tensors Bx3xSxS in [0, 1]."""

    def __init__(self, size_px: int, seed: int = 0, use_photos: bool = True) -> None:
        self.size_px = size_px
        self.rng = np.random.default_rng(seed + 7919)
        self.photos = _photos() if use_photos else ()

    def _one(self) -> np.ndarray:
        s = self.size_px
        kinds = 4 if self.photos else 3
        k = int(self.rng.integers(kinds))
        if k == 0:
            img = _pink_noise(self.rng, s)
        elif k == 1:
            img = _dead_leaves(self.rng, s)
        elif k == 2:
            img = _stripes(self.rng, s)
        else:
            ph = self.photos[int(self.rng.integers(len(self.photos)))]
            side = min(ph.shape[1:])
            c = int(self.rng.integers(min(s // 2, side), side + 1))
            y = int(self.rng.integers(0, ph.shape[1] - c + 1))
            x = int(self.rng.integers(0, ph.shape[2] - c + 1))
            t = torch.from_numpy(np.ascontiguousarray(ph[:, y : y + c, x : x + c]))[None]
            img = F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False)[0].numpy()
        if self.rng.random() < 0.3:  # RandomGrayscale(0.3) as in the reference penalty transform
            img = np.repeat(img.mean(0, keepdims=True), 3, 0)
        return img.astype(np.float32)

    def sample(self, n: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([self._one() for _ in range(n)]))
