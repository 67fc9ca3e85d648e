"""Teachers for EfficientAD: the frozen EfficientNet-Lite feature target itself, or a PDN distilled from it.

The Lite target follows the reference distillation target's recipe on Lite stages (algorithms.md §5.1):
stages 3/4/5 of the network run at 2x the input size, each 3x3 average pooled (PatchCore's local
aggregation), resized to the input/4 grid and concatenated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training.backbone import LiteBackbone
from training.errors import TrainConfigError
from training.models.pdn import PDN_WIDTHS, Pdn

__all__ = ["LiteTarget", "load_pdn_teacher", "default_teacher_path"]


class LiteTarget(nn.Module):
    """Frozen Lite feature target on a fixed grid; output channels = sum of the tapped stages."""

    def __init__(
        self, backbone: str, size_px: int, grid: int, stages: Sequence[int] = (3, 4, 5), scale: int = 2,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.grid = grid
        self.backbone = LiteBackbone(backbone, stages, size_px * scale, pretrained=pretrained)
        self.out_channels = sum(self.backbone.channels)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        if self.scale != 1:
            s = image.shape[-1] * self.scale
            x = F.interpolate(image, size=(s, s), mode="bilinear", align_corners=False)
        feats = []
        for f in self.backbone(x):
            f = F.avg_pool2d(f, 3, stride=1, padding=1)
            if f.shape[-1] != self.grid:
                f = F.interpolate(f, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
            feats.append(f)
        return torch.cat(feats, dim=1)


def default_teacher_path(size: str) -> Path:
    """Package-data location of the project's own distilled PDN teacher for a size."""
    return Path(__file__).resolve().parent.parent / "weights" / f"pdn_{size}_lite0.pt"


def load_pdn_teacher(size: str, path: str | Path | None) -> Pdn:
    """Load a distilled PDN teacher (from `edge-train distill-teacher`), frozen."""
    p = Path(path) if path else default_teacher_path(size)
    if not p.is_file():
        raise TrainConfigError(
            f"PDN teacher weights not found at {p}: run `edge-train distill-teacher --width {size} --out {p}` "
            "or use the frozen backbone as teacher with --teacher lite0"
        )
    state = torch.load(p, map_location="cpu", weights_only=True)
    pdn = Pdn(int(state["out_channels"]), PDN_WIDTHS[size])
    pdn.load_state_dict(state["state_dict"])
    pdn.eval()
    for q in pdn.parameters():
        q.requires_grad_(False)
    return pdn
