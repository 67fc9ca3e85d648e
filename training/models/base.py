"""The one model interface every family implements, and the shared scoring head.

A family produces one or more raw anomaly maps on its feature grid, and may add a raw image-level (global)
score. The shared head divides each non-negative map by its mean on held-out good images at every position
(`position_norm`), normalises it by quantiles of those images (EfficientAD's q_a -> 0, q_b -> 0.1), averages
them, upsamples the result to the input grid and pools an image score; a global score is
added to it as a z-score scaled to the pooled score's spread on good images (PUAD's fusion, Sugawara &
Imamura, ICIP 2024), so the image score stays in map units. All of it is exported inside the ONNX graph.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

__all__ = ["AnomalyModel", "FamilyParams", "RawOutputs", "TrainBatch", "REGISTRY", "register"]

# a batch's raw maps (each Bx1xhxw) and raw global score [B] (None without a global branch)
RawOutputs = tuple[list[torch.Tensor], "torch.Tensor | None"]

# side of the stored per-position scale of each map (resized to the map's own grid; 32: the Gaussian's grid)
POS_GRID = 32
# held-out good images' worth of prior toward a flat scale: a handful of images cannot say what a position is
POS_PRIOR = 8


class FamilyParams(BaseModel):
    """Base of every family's parameters (unknown keys are errors), with the image-score pooling all share.

    "top" averages the highest `score_top` share of the map's pixels: a single hot pixel of sensor noise or
    texture no longer decides the verdict, while any defect covering that share scores in full (measured on
    ELPV poly, docs/benchmarks.md). "max" is EfficientAD's; "mean" is AST's alternative.
    """

    model_config = ConfigDict(extra="forbid")
    score_pool: Literal["max", "mean", "top"] = Field("max", description="image score from the map: max, mean or mean of the top share")
    score_top: float = Field(0.01, gt=0.0, le=1.0, description="share of map pixels averaged when score_pool is top")
    position_norm: bool = Field(
        False, description="divide each non-negative map by its mean on held-out good images at every position "
        "(textures: busy places such as edges and busbars stop deciding the score; objects: it also mutes the "
        "places where parts sit, so localisation suffers)"
    )


@dataclass
class TrainBatch:
    """Indices into the training set and the images themselves (float Bx3xSxS in [0, 1])."""

    index: torch.Tensor
    images: torch.Tensor


class AnomalyModel(nn.Module, ABC):
    """Teacher-student anomaly model: raw maps from the family, normalisation and pooling shared.

    Args:
        size_px: square input size of the ONNX contract.
        n_maps: number of raw maps `raw_maps` returns.
        params: the family's parameters; their score_pool / score_top choose the image score.
    """

    family: ClassVar[str]
    Params: ClassVar[type[FamilyParams]]
    # bf16 training was checked against fp32 for this family (equal AUROC per step): precision=auto may use it
    bf16_ok: ClassVar[bool] = False

    def __init__(self, size_px: int, n_maps: int, params: FamilyParams) -> None:
        super().__init__()
        self.size_px = size_px
        self.score_pool = params.score_pool
        # static k: ONNX TopK with a constant k (edge-deploy checks it against TensorRT 8.6's limit of 1024)
        self.score_k = max(1, round(params.score_top * size_px * size_px)) if params.score_pool == "top" else 1
        self.position_norm = params.position_norm
        # ones: a flat scale, what runs saved before position_norm load with
        self.register_buffer("pos_scale", torch.ones(n_maps, POS_GRID, POS_GRID))
        self.register_buffer("q_lo", torch.zeros(n_maps))
        self.register_buffer("q_hi", torch.full((n_maps,), 0.1))
        self.register_buffer("map_weight", torch.full((n_maps,), 1.0 / n_maps))
        # score += global_gain * (global - global_mean); set by calibrate() when the family has a global branch
        self.register_buffer("global_mean", torch.zeros(1))
        self.register_buffer("global_gain", torch.zeros(1))

    # --- what a family implements -------------------------------------------------------------
    @abstractmethod
    def raw_maps(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Raw anomaly maps (each Bx1xhxw, any grid) of images Bx3xSxS in [0, 1]."""

    @abstractmethod
    def prepare(self, train_images: torch.Tensor, progress: bool = True) -> None:
        """One-off work before the training loop (teacher statistics, feature caches)."""

    @abstractmethod
    def training_losses(self, batch: TrainBatch, done: float) -> dict[str, torch.Tensor]:
        """Loss terms for one step; `done` is the share of the schedule done, in [0, 1]; key "loss" is minimised."""

    def raw(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Raw maps and, for families with a global branch (which override this), a raw image score [B]."""
        return self.raw_maps(image), None

    def global_weight(self) -> float:
        """Weight of the global z-score against the pooled map's (0: no global branch)."""
        return 0.0

    def equalize_channels(self, good_images: torch.Tensor) -> None:
        """After training: function-preserving rescaling that helps INT8 activations (none by default)."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def describe(self) -> dict[str, Any]:
        """Facts for the metadata file (family, variant, teacher...)."""
        return {"family": self.family}

    # --- shared scoring head -----------------------------------------------------------------
    def normalised_maps(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self._normalise(self.raw_maps(image))

    def _normalise(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [0.1 * (self._scaled(i, m) - self.q_lo[i]) / (self.q_hi[i] - self.q_lo[i]) for i, m in enumerate(maps)]

    def _scaled(self, i: int, m: torch.Tensor) -> torch.Tensor:
        """Raw map i divided by its per-position good-image scale (unchanged without position_norm)."""
        if not self.position_norm:
            return m
        scale = self.pos_scale[i][None, None]
        if scale.shape[-2:] != m.shape[-2:]:  # a resize of a constant, with static sizes in the graph
            scale = F.interpolate(scale, size=(int(m.shape[-2]), int(m.shape[-1])), mode="bilinear", align_corners=False)
        return m / scale

    def _fit_position_scale(self, i: int, maps: torch.Tensor) -> None:
        """Per-position mean of good maps Bx1xhxw relative to their overall mean, shrunk toward 1.

        A score is a ratio to what good parts show at that position only where the map is a distance (>= 0);
        a map with negative values keeps a flat scale. On ELPV (texture recipe) every fusion gained 0.003-0.006
        image AUROC; on the synthetic parts it cost 0.016-0.03 AUPRO, as the places where parts sit are busy on
        good images too, so only the texture recipe turns it on (docs/benchmarks.md).
        """
        self.pos_scale[i] = 1.0
        if not self.position_norm or float(maps.min()) < 0:
            return
        mean = F.adaptive_avg_pool2d(maps.mean(dim=0, keepdim=True), POS_GRID)
        rel = mean / mean.mean().clamp_min(1e-12)
        n = len(maps)
        # never below a quarter: a position good parts leave at ~0 would otherwise turn noise into defects
        self.pos_scale[i] = ((n * rel + POS_PRIOR) / (n + POS_PRIOR)).clamp_min(0.25)[0, 0]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image Bx3xSxS RGB in [0, 1] -> (anomaly_map Bx1xSxS normalised, score [B])."""
        maps, global_raw = self.raw(image)
        combined, score = self._pool(self._normalise(maps))
        return combined, self._add_global(score, global_raw)

    def score_from_raw(self, maps: list[torch.Tensor], global_raw: torch.Tensor | None) -> torch.Tensor:
        """The image score forward() gives for these raw outputs (fusions are compared without new passes)."""
        return self._add_global(self._pool(self._normalise(maps))[1], global_raw)

    def _add_global(self, score: torch.Tensor, global_raw: torch.Tensor | None) -> torch.Tensor:
        return score if global_raw is None else score + self.global_gain * (global_raw - self.global_mean)

    def _pool(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted sum of normalised maps on the input grid, and its pooled image score."""
        combined = None
        for i, m in enumerate(maps):
            m = F.interpolate(m, size=(self.size_px, self.size_px), mode="bilinear", align_corners=False)
            combined = m * self.map_weight[i] if combined is None else combined + m * self.map_weight[i]
        assert combined is not None
        flat = combined.flatten(1)
        if self.score_pool == "max":
            score = flat.amax(dim=1)
        elif self.score_pool == "mean":
            score = flat.mean(dim=1)
        else:
            score = flat.topk(self.score_k, dim=1).values.mean(dim=1)
        return combined, score

    @torch.no_grad()
    def calibrate(self, good_images: torch.Tensor, batch_size: int = 8) -> list[RawOutputs]:
        """From held-out good images: every raw map's per-position scale and q 0.9 / 0.995 normalisation,
        then the global branch's fusion. Returns the images' raw outputs (choosing a fusion reuses them)."""
        outs = [self.raw(good_images[i : i + batch_size]) for i in range(0, len(good_images), batch_size)]
        for k in range(len(outs[0][0])):
            self._fit_position_scale(k, torch.cat([maps[k] for maps, _ in outs]))
            values = torch.cat([self._scaled(k, maps[k]).flatten() for maps, _ in outs])
            if values.numel() > 2**24:
                values = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[: 2**24]]
            lo, hi = torch.quantile(values, 0.9), torch.quantile(values, 0.995)
            self.q_lo[k] = lo
            self.q_hi[k] = torch.maximum(hi, lo + 1e-6)
        self._fit_global_gain(outs)
        return outs

    def _fit_global_gain(self, good: list[RawOutputs]) -> None:
        """The global score's mean on good images, and the gain that gives its z-score the pooled map
        score's spread times global_weight() (0 without a global branch or with fewer than two images)."""
        glob = [g for _, g in good if g is not None]
        if not glob or self.global_weight() <= 0 or sum(len(g) for g in glob) < 2:
            self.global_gain.zero_()
            return
        pooled = torch.cat([self._pool(self._normalise(maps))[1] for maps, _ in good])
        g = torch.cat(glob)
        self.global_mean.fill_(float(g.mean()))
        self.global_gain.fill_(self.global_weight() * float(pooled.std() / g.std().clamp_min(1e-12)))

    # --- fusion choices (training.selection picks one per run) --------------------------------
    def fusion_options(self) -> list[dict[str, Any]]:
        """The ways this model can fuse its maps and global score, its own setting first."""
        return [{}]

    def apply_fusion(self, option: dict[str, Any], good: list[RawOutputs]) -> None:
        """Use one of fusion_options(); good = calibrate()'s raw outputs of the held-out good images."""

    def needs_training(self, option: dict[str, Any]) -> bool:
        """Whether the scores under fusion `option` depend on what training learns (False: training-free maps
        only, which a fit can stop training for: training.loop's selection check)."""
        return True

    def drop_unweighted_branches(self, option: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """After the fusion choice: remove each trained branch whose map `option` weighs 0, so the exported graph
        no longer computes it. Returns the params that rebuild the smaller model (for the saved config) and a
        note per branch dropped; ({}, []) when nothing was."""
        return {}, []

    def _drop_map(self, k: int) -> None:
        """Forget raw map k's calibration (its weight, quantiles and per-position scale)."""
        keep = [i for i in range(len(self.map_weight)) if i != k]
        for name in ("map_weight", "q_lo", "q_hi", "pos_scale"):
            setattr(self, name, getattr(self, name)[keep].clone())


REGISTRY: dict[str, type[AnomalyModel]] = {}


def register(cls: type[AnomalyModel]) -> type[AnomalyModel]:
    REGISTRY[cls.family] = cls
    return cls
