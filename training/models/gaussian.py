"""The Gaussian statistics EfficientAD's training-free branches are fitted with: one Gaussian of whole-image
features (the global branch) and one per grid position (the PaDiM-style map). Each returns a whitening W with
W^T W = inv(cov), so scoring is a matrix product: the exported graph needs no inverse."""

from __future__ import annotations

import torch

__all__ = ["global_gaussian", "pca_projection", "position_gaussians"]


def global_gaussian(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (1 x p) and whitening (p x p) of feature vectors x (N x p), with Ledoit-Wolf shrinkage toward a
    scaled identity: with tens of images the covariance of hundreds of channels is singular otherwise."""
    x64 = x.double()
    mean = x64.mean(dim=0, keepdim=True)
    c = x64 - mean
    n, p = c.shape
    cov = c.T @ c / n
    mu = cov.diagonal().mean()
    target = mu * torch.eye(p, dtype=cov.dtype)
    delta = (cov - target).pow(2).sum() / p
    # mean over images of |x x^T - S|_F^2 = |x|^4 - 2 x^T S x + |S|_F^2
    sq = c.pow(2).sum(dim=1)
    beta = ((sq.pow(2) - 2 * ((c @ cov) * c).sum(dim=1) + cov.pow(2).sum()).mean() / n / p).clamp(max=delta)
    shrink = float(beta / delta.clamp_min(1e-12))
    cov = shrink * target + (1 - shrink) * cov + 1e-6 * mu.clamp_min(1e-12) * torch.eye(p, dtype=cov.dtype)
    return mean.float(), torch.linalg.cholesky(torch.linalg.inv(cov)).T.float()


def pca_projection(t: torch.Tensor, d: int) -> torch.Tensor:
    """The d leading principal directions of feature maps t (N x C x h x w) as a 1x1 convolution (d x C x 1 x 1).

    Exact (eigh of the channel covariance): torch.pca_lowrank is randomised and its approximation moved ELPV poly
    AUROC by ~0.01 between runs at 128 of 232 dimensions (measured)."""
    x64 = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]).double()
    centred = x64 - x64.mean(dim=0)
    _, vec = torch.linalg.eigh(centred.T @ centred)
    return vec.flip(1)[:, :d].T.float().reshape(d, -1, 1, 1)


def position_gaussians(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position mean (1 x d x h x w) and whitening (hw x d x d) of projected feature maps z (N x d x h x w).

    Each position's covariance is shrunk toward the mean of all of them by d/(N+d) (N images, d dims): with few
    images (60 synthetic parts: pixel AUROC 0.81 -> 0.88) the per-position estimates are noise, with many (370
    ELPV cells: image AUROC 0.957 -> 0.956) they carry the aligned product's structure."""
    mean = z.mean(dim=0, keepdim=True)
    n, d, gh, gw = z.shape
    x = (z - mean).permute(2, 3, 0, 1).reshape(gh * gw, n, d).double()
    cov = x.transpose(1, 2) @ x / max(n - 1, 1)
    shared = cov.mean(dim=0, keepdim=True)
    lam = d / (n + d)
    cov = (1 - lam) * cov + lam * shared
    cov += 1e-3 * shared.diagonal(dim1=1, dim2=2).mean().clamp_min(1e-12) * torch.eye(d, dtype=cov.dtype)
    chol = torch.linalg.cholesky(torch.linalg.inv(cov))  # inv = L L^T -> W = L^T
    return mean, chol.transpose(1, 2).float()
