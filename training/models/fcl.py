"""FCL: feature consistency learning with spatial neighbouring coding (Li & Hu, IEEE TIM 2024,
doi 10.1109/TIM.2024.3522399).

Only the abstract is public. It names: an SNC module that encodes each feature position with its spatial
neighbourhood, consistency constraints on low-level and high-level teacher-student features in one
framework, and anomaly localisation as the focus. Everything else here is Lineside's reading
(algorithms.md §4): the teacher is frozen EfficientNet-Lite (stage 2 and 3 = low level, stage 5 = high
level); the student is the same topology from random initialisation (STFPM-style), trained to make its
per-level SNC codes consistent with the teacher's (L2 distance of channel-normalised codes); the map is the
per-level inconsistency, each normalised on good images, upsampled and averaged; image score = max.

Lineside's addition (on by default, `global_branch`): a global consistency on the high level
(training/models/consistency.py), so a missing, extra or misplaced part is localised too.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from training.backbone import LiteBackbone
from training.models.base import AnomalyModel, FamilyParams, TrainBatch, register
from training.models.consistency import GlobalConsistency
from training.models.snc import SncHead

__all__ = ["Fcl", "FclParams", "VARIANTS"]


class FclParams(FamilyParams):
    backbone: Literal["lite0", "lite1", "lite2"] = Field("lite0", description="frozen teacher and student topology")
    stages: tuple[int, ...] = Field((2, 3, 5), description="tapped stages: low level (2, 3) and high level (5)")
    backbone_scale: int = Field(2, ge=1, le=4, description="network input = scale x model input")
    snc: bool = Field(True, description="compare through spatial-neighbourhood codes (off: plain feature consistency)")
    snc_kernel: int = Field(3, ge=1, description="SNC neighbourhood size (odd)")
    global_branch: bool = Field(True, description="add the bottleneck (autoencoder) consistency on the high level")
    student_init: Literal["random", "teacher"] = Field("random", description="student starts random or as the teacher")
    pretrained_backbone: bool = Field(True, description="ImageNet weights for the teacher (False only in tests)")


VARIANTS: dict[str, dict[str, Any]] = {
    "fcl": {},
    "fcl-nosnc": {"snc": False},
    "fcl-local": {"global_branch": False},
    "fcl-tiny": {"stages": (2, 3), "backbone_scale": 1},
}


@register
class Fcl(AnomalyModel):
    family = "fcl"
    Params = FclParams

    def __init__(self, params: FclParams, size_px: int, seed: int = 0) -> None:
        super().__init__(size_px, n_maps=len(params.stages) + int(params.global_branch), params=params)
        self.params = params
        self.scale = params.backbone_scale
        n = size_px * self.scale
        self.teacher = LiteBackbone(params.backbone, params.stages, n, pretrained=params.pretrained_backbone)
        torch.manual_seed(seed)
        self.student = LiteBackbone(params.backbone, params.stages, n, pretrained=False)
        if params.student_init == "teacher":
            self.student.load_state_dict(self.teacher.state_dict())
        self.student.unfreeze()
        self.sncs = nn.ModuleList(
            SncHead(c, params.snc_kernel) if params.snc else nn.Identity() for c in self.teacher.channels
        )
        self.glob: GlobalConsistency | None = None
        if params.global_branch:
            self.glob = GlobalConsistency(size_px, self.teacher.channels[-1], n // self.teacher.strides[-1])

    def describe(self) -> dict[str, Any]:
        p = self.params
        variant = "fcl" + ("" if p.snc else "-nosnc") + ("" if p.global_branch else "-local")
        return {"family": self.family, "variant": variant, "params": p.model_dump()}

    def _input(self, image: torch.Tensor) -> torch.Tensor:
        if self.scale == 1:
            return image
        s = image.shape[-1] * self.scale
        return F.interpolate(image, size=(s, s), mode="bilinear", align_corners=False)

    def _inconsistency(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self._input(image)
        with torch.no_grad():
            t_feats = self.teacher(x)
        s_feats = self.student(x)
        maps = []
        for snc, t, s in zip(self.sncs, t_feats, s_feats):
            t, s = F.normalize(snc(t), dim=1), F.normalize(snc(s), dim=1)
            maps.append(0.5 * (t - s).pow(2).sum(dim=1, keepdim=True))
        if self.glob is not None:
            maps.append(self.glob(image, t_feats[-1]))
        return maps

    @torch.no_grad()
    def prepare(self, train_images: torch.Tensor, progress: bool = True) -> None:
        """Channel statistics of the teacher's high-level features, the global branch's standardised target."""
        if self.glob is None:
            return
        from tqdm import tqdm

        feats = [self.teacher(self._input(train_images[i : i + 8]))[-1]
                 for i in tqdm(range(0, len(train_images), 8), desc="teacher features", disable=not progress)]
        self.glob.fit_stats(torch.cat(feats))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.student.parameters()) + (list(self.glob.parameters()) if self.glob is not None else [])

    def training_losses(self, batch: TrainBatch, done: float) -> dict[str, torch.Tensor]:
        maps = self._inconsistency(batch.images)
        names = [f"level{i}" for i in range(len(self.params.stages))] + ["global"]
        losses = {n: m.mean() for n, m in zip(names, maps)}
        losses["loss"] = sum(losses.values())  # type: ignore[assignment]
        return losses

    def raw_maps(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self._inconsistency(image)
