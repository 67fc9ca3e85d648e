"""AST: asymmetric student-teacher networks (Rudolph, Wehrbein, Rosenhahn, Wandt, WACV 2023, arXiv 2210.07829),
written from the paper and the structure of its reference code (marco-rudolph/AST).

Follows the paper: a conditional normalizing-flow teacher (GLOW affine couplings conditioned on a fixed
sinusoidal positional encoding, atan soft-clamped scales, fixed channel permutations, sub-network scale
gamma starting at zero) trained by maximum likelihood on frozen backbone features; a conventional
convolutional student (conv -> residual blocks -> conv) regressing the teacher's output; map = mean over
channels of the squared distance; pre-extracted features.
Lineside's adaptation: the backbone is EfficientNet-Lite (stage 5 + stage 6 upsampled = 304 channels on
Lite0, the reference width) at 2x the input size, so the grid is input/8; the student width is a variant
(1024 as in the paper, 256 for the edge); teacher and student are trained in one run, teacher first.
Optional, Lineside's own (`global_branch`, variant `ast-global`): the global consistency of FCL
(training/models/consistency.py) on the same features, as a second map, for logical anomalies.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from training.backbone import LiteBackbone
from training.models.base import AnomalyModel, FamilyParams, TrainBatch, register
from training.models.consistency import GlobalConsistency
from training.models.snc import SncHead

__all__ = ["Ast", "AstParams", "VARIANTS", "positional_encoding", "FlowTeacher"]


class AstParams(FamilyParams):
    backbone: Literal["lite0", "lite1", "lite2"] = Field("lite0", description="frozen feature extractor")
    backbone_scale: int = Field(2, ge=1, le=4, description="backbone input = scale x model input")
    student_width: int = Field(256, ge=16, description="student hidden channels (paper: 1024)")
    student_blocks: int = Field(4, ge=1, description="residual blocks of the student")
    coupling_blocks: int = Field(4, ge=1, description="flow coupling blocks")
    flow_hidden: int = Field(64, ge=8, description="hidden channels of the coupling sub-networks")
    clamp: float = Field(1.9, gt=0, description="soft clamp alpha of the coupling scales")
    pos_channels: int = Field(32, ge=4, description="positional-encoding channels")
    teacher_fraction: float = Field(0.5, gt=0, lt=1, description="share of the schedule (steps or time budget) that trains the flow teacher")
    snc: bool = Field(False, description="compare teacher and student through spatial-neighbourhood codes (FCL)")
    global_branch: bool = Field(False, description="add the bottleneck (autoencoder) consistency map (Lineside's own)")
    pretrained_backbone: bool = Field(True, description="ImageNet weights (False only in tests)")


VARIANTS: dict[str, dict[str, Any]] = {
    "ast": {"student_width": 256},
    "ast-paper": {"student_width": 1024},
    "ast-global": {"student_width": 256, "global_branch": True},
    "ast-tiny": {"student_width": 32, "student_blocks": 1, "flow_hidden": 16, "coupling_blocks": 2},
}


def positional_encoding(channels: int, h: int, w: int) -> torch.Tensor:
    """Fixed 2-D sinusoidal encoding: half the channels encode x, half y (CFLOW-AD convention)."""
    pe = torch.zeros(channels, h, w)
    d = channels // 2
    div = torch.exp(torch.arange(0.0, d, 2) * -(math.log(1e4) / d))
    pos_w = torch.arange(0.0, w).unsqueeze(1)
    pos_h = torch.arange(0.0, h).unsqueeze(1)
    pe[0:d:2] = torch.sin(pos_w * div).T.unsqueeze(1).repeat(1, h, 1)
    pe[1:d:2] = torch.cos(pos_w * div).T.unsqueeze(1).repeat(1, h, 1)
    pe[d::2] = torch.sin(pos_h * div).T.unsqueeze(2).repeat(1, 1, w)
    pe[d + 1 :: 2] = torch.cos(pos_h * div).T.unsqueeze(2).repeat(1, 1, w)
    return pe


class _SubNet(nn.Module):
    def __init__(self, c_in: int, c_out: int, hidden: int, k: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, hidden, k, padding=k // 2, padding_mode="replicate")
        self.conv2 = nn.Conv2d(hidden, c_out, k, padding=k // 2, padding_mode="replicate")
        self.gamma = nn.Parameter(torch.zeros(1))  # the coupling starts as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x))) * self.gamma


class _Coupling(nn.Module):
    """Fixed permutation, then a GLOW affine coupling in two halves, each conditioned on [other half, posenc]."""

    def __init__(self, channels: int, cond: int, hidden: int, k: int, clamp: float, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(channels, generator=g)
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))
        self.c1 = channels // 2
        self.c2 = channels - self.c1
        self.f1 = _SubNet(self.c1 + cond, 2 * self.c2, hidden, k)  # transforms x2 from y1
        self.f2 = _SubNet(self.c2 + cond, 2 * self.c1, hidden, k)  # transforms x1 from x2
        self.clamp = clamp

    def _scale(self, s: torch.Tensor) -> torch.Tensor:
        return self.clamp * 0.636 * torch.atan(s / self.clamp)  # |s'| < clamp

    def forward(self, x: torch.Tensor, cond: torch.Tensor, reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if not reverse:
            x = x[:, self.perm]
            x1, x2 = x[:, : self.c1], x[:, self.c1 :]
            s2, t2 = self.f2(torch.cat([x2, cond], 1)).chunk(2, 1)
            s2 = self._scale(s2)
            y1 = torch.exp(s2) * x1 + t2
            s1, t1 = self.f1(torch.cat([y1, cond], 1)).chunk(2, 1)
            s1 = self._scale(s1)
            y2 = torch.exp(s1) * x2 + t1
            return torch.cat([y1, y2], 1), s1.sum(1) + s2.sum(1)
        y1, y2 = x[:, : self.c1], x[:, self.c1 :]
        s1, t1 = self.f1(torch.cat([y1, cond], 1)).chunk(2, 1)
        x2 = (y2 - t1) * torch.exp(-self._scale(s1))
        s2, t2 = self.f2(torch.cat([x2, cond], 1)).chunk(2, 1)
        x1 = (y1 - t2) * torch.exp(-self._scale(s2))
        return torch.cat([x1, x2], 1)[:, self.inv_perm], torch.zeros_like(x[:, 0])


class FlowTeacher(nn.Module):
    """Conditional normalizing flow: features -> z (and the per-position log-determinant for training)."""

    def __init__(self, channels: int, cond: int, blocks: int, hidden: int, clamp: float) -> None:
        super().__init__()
        kernels = [3] * (blocks - 1) + [5]  # the reference's last block looks wider
        self.blocks = nn.ModuleList(_Coupling(channels, cond, hidden, k, clamp, seed=i) for i, k in enumerate(kernels))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros_like(x[:, 0])
        for b in self.blocks:
            x, ld = b(x, cond)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        for b in reversed(self.blocks):
            z, _ = b(z, cond, reverse=True)
        return z


class _Student(nn.Module):
    def __init__(self, c_in: int, c_out: int, width: int, blocks: int) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.Conv2d(c_in, width, 3, padding=1), nn.LeakyReLU())
        self.res = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(),
                          nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU())
            for _ in range(blocks)
        )
        self.out = nn.Conv2d(width, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for r in self.res:
            x = x + r(x)
        return self.out(x)


@register
class Ast(AnomalyModel):
    family = "ast"
    Params = AstParams

    def __init__(self, params: AstParams, size_px: int, seed: int = 0) -> None:
        super().__init__(size_px, n_maps=1 + int(params.global_branch), params=params)
        self.params = params
        self.scale = params.backbone_scale
        self.backbone = LiteBackbone(params.backbone, (5, 6), size_px * self.scale, pretrained=params.pretrained_backbone)
        self.grid = size_px * self.scale // 16
        c = sum(self.backbone.channels)
        self.channels = c
        self.register_buffer("posenc", positional_encoding(params.pos_channels, self.grid, self.grid)[None])
        self.register_buffer("f_mean", torch.zeros(1, c, 1, 1))
        self.register_buffer("f_std", torch.ones(1, c, 1, 1))
        self.teacher = FlowTeacher(c, params.pos_channels, params.coupling_blocks, params.flow_hidden, params.clamp)
        self.student = _Student(c + params.pos_channels, c, params.student_width, params.student_blocks)
        self.snc = SncHead(c) if params.snc else None
        self.glob = GlobalConsistency(size_px, c, self.grid) if params.global_branch else None
        self._cache: torch.Tensor | None = None

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, "variant": f"ast-w{self.params.student_width}", "params": self.params.model_dump()}

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Standardised Lite stage-5 + upsampled stage-6 features on the input/8 grid."""
        with torch.no_grad():
            s = image.shape[-1] * self.scale
            x = F.interpolate(image, size=(s, s), mode="bilinear", align_corners=False) if self.scale != 1 else image
            f5, f6 = self.backbone(x)
            f6 = F.interpolate(f6, size=f5.shape[-2:], mode="bilinear", align_corners=False)
            return (torch.cat([f5, f6], 1) - self.f_mean) / self.f_std

    @torch.no_grad()
    def prepare(self, train_images: torch.Tensor, progress: bool = True) -> None:
        from tqdm import tqdm

        self.f_mean.zero_()
        self.f_std.fill_(1.0)
        feats = torch.cat([self.features(train_images[i : i + 8])
                           for i in tqdm(range(0, len(train_images), 8), desc="backbone features", disable=not progress)])
        self.f_mean.copy_(feats.mean(dim=(0, 2, 3), keepdim=True))
        self.f_std.copy_(feats.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6))
        self._cache = (feats - self.f_mean) / self.f_std
        if self.glob is not None:
            self.glob.fit_stats(self._cache)

    def trainable_parameters(self) -> list[nn.Parameter]:
        extra = list(self.glob.parameters()) if self.glob is not None else []
        return list(self.teacher.parameters()) + list(self.student.parameters()) + extra

    def _cond(self, b: int) -> torch.Tensor:
        return self.posenc.expand(b, -1, -1, -1)

    def training_losses(self, batch: TrainBatch, done: float) -> dict[str, torch.Tensor]:
        assert self._cache is not None, "prepare() must run before training"
        f = self._cache[batch.index].to(batch.images.device)  # the cache stays in host memory
        cond = self._cond(f.shape[0])
        losses: dict[str, torch.Tensor] = {}
        if self.glob is not None:  # the bottleneck learns all along; it does not need the teacher
            losses["global"] = self.glob(batch.images, f).mean()
        if done < self.params.teacher_fraction:
            z, logdet = self.teacher(f, cond)
            losses["flow_nll"] = (0.5 * z.pow(2).sum(1) - logdet).mean() / self.channels
        else:
            with torch.no_grad():
                self.teacher.eval()
                z, _ = self.teacher(f, cond)
            s = self.student(torch.cat([f, cond], 1))
            if self.snc is not None:
                z, s = self.snc(z), self.snc(s)
            losses["student"] = (z - s).pow(2).mean()
        losses["loss"] = sum(losses.values())  # type: ignore[assignment]
        return losses

    def raw_maps(self, image: torch.Tensor) -> list[torch.Tensor]:
        f = self.features(image)
        cond = self._cond(f.shape[0])
        z, _ = self.teacher(f, cond)
        s = self.student(torch.cat([f, cond], 1))
        if self.snc is not None:
            z, s = self.snc(z), self.snc(s)
        maps = [(z - s).pow(2).mean(dim=1, keepdim=True)]
        if self.glob is not None:
            maps.append(self.glob(image, f))
        return maps
