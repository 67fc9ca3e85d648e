"""Global consistency: a bottleneck that learns the layout of good parts (Lineside's own, for FCL and AST).

Local teacher-student consistency cannot see a missing, extra or misplaced part: every patch of such an image
is plausible on its own. An EfficientAD-style autoencoder (image -> 64-d code -> feature grid) learns a
family's channel-standardised high-level teacher features of good parts; a layout the code has never seen
cannot be expressed, so the autoencoder/teacher inconsistency marks where the layout is wrong.
"""

from __future__ import annotations

import torch
from torch import nn

from training.models.pdn import Autoencoder

__all__ = ["GlobalConsistency"]


class GlobalConsistency(nn.Module):
    """Autoencoder of standardised teacher features on a grid; `forward` gives the B x 1 x g x g map."""

    def __init__(self, size_px: int, channels: int, grid: int) -> None:
        super().__init__()
        self.ae = Autoencoder(size_px, channels, grid)
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    @torch.no_grad()
    def fit_stats(self, feats: torch.Tensor) -> None:
        """Channel statistics of the good images' teacher features (the autoencoder's standardised target)."""
        self.mean.copy_(feats.mean(dim=(0, 2, 3), keepdim=True))
        self.std.copy_(feats.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6))

    def forward(self, image: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        target = (feats - self.mean) / self.std
        return (self.ae(image) - target).pow(2).mean(dim=1, keepdim=True)
