"""Spatial neighbouring coding (SNC), after Li & Hu, "Feature Consistency Learning for Anomaly Detection",
IEEE TIM 2024 (doi 10.1109/TIM.2024.3522399).

Only the paper's abstract is public: SNC 'encodes the contextual information of the neighbourhood of each
element in feature space' and plugs into teacher-student detectors. This module is Lineside's reading: each
position is coded by its own feature and its contrast to the mean of its k x k neighbourhood. The code is
fixed (no weights), so teacher and student cannot agree on a collapsed code; a student that matches the
teacher's codes must also match how each position differs from its surroundings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SncHead"]


class SncHead(nn.Module):
    """C x H x W features -> 2C x H x W codes: [f, f - mean_kxk(f)] (zero padding excluded from the mean)."""

    def __init__(self, channels: int, kernel: int = 3) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"SNC kernel must be odd, got {kernel}")
        self.channels = channels
        self.kernel = kernel

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        k = self.kernel
        ctx = F.avg_pool2d(f, k, stride=1, padding=k // 2, count_include_pad=False)
        return torch.cat([f, f - ctx], dim=1)
