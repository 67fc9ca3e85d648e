"""EfficientAD (Batzner, Heckler, König, WACV 2024, arXiv 2303.14535), ported from the paper's description and
the training recipe read in nelson1425/EfficientAD, with the distinctive-feature separation constraint of
Lee & Kim (arXiv 2407.17909) as an option.

Lineside's choices where the paper cannot apply here: the teacher is a PDN distilled from EfficientNet-Lite
(no WideResNet weights offline) or the frozen Lite target itself; penalty images are procedural (no
ImageNet); batch size is configurable (the paper uses 1); an optional per-position Gaussian of the teacher
features (PaDiM-style: PCA-projected, one covariance per grid cell) adds a third map — a few matrix products,
no training — and `map_weights` sets how the three maps are combined (texture products do best without the
autoencoder's global map, docs/benchmarks.md; a map the fusion chosen after training weighs 0 takes its branch
out of the model: drop_unweighted_branches); with a Lite teacher `student_stages` limits the student to the
stages its 33 px receptive field can predict (deeper stages' residual on good images is context it never
sees: measured, the student's error on stage 3 separates ELPV defects far better than on stages 4/5).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from training.errors import TrainConfigError
from training.models.base import AnomalyModel, FamilyParams, RawOutputs, TrainBatch, register
from training.models.gaussian import global_gaussian, pca_projection, position_gaussians
from training.models.pdn import PDN_WIDTHS, Autoencoder, Pdn, equalize_channels, keep_outputs, pdn_grid
from training.models.snc import SncHead
from training.models.teachers import LiteTarget, default_teacher_path, load_pdn_teacher
from training.penalty import PenaltyImages

__all__ = ["EfficientAd", "EfficientAdParams", "MarginParams", "VARIANTS"]


class MarginParams(BaseModel):
    """Distinctive-feature separation constraint (DFSC) on the autoencoder branch (Lee & Kim 2024).

    The paper's formula is not public; two readings (algorithms.md §2):
    - truncate: teacher elements the autoencoder misses by more than the q-quantile are 'distinctive' and
      are dropped from the autoencoder loss, so the global branch does not learn to reproduce them;
    - hinge: additionally push the autoencoder at least `margin` (squared distance) away from the teacher
      on those distinctive elements, weighted by `weight`.
    """

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="apply the constraint")
    mode: Literal["truncate", "hinge"] = Field("truncate", description="which reading of the constraint")
    quantile: float = Field(0.99, gt=0.5, lt=1.0, description="per-batch quantile of teacher-AE distance that marks distinctive elements")
    margin: float = Field(1.0, gt=0.0, description="hinge margin on the squared teacher-AE distance")
    weight: float = Field(0.1, ge=0.0, description="weight of the hinge term")


class EfficientAdParams(FamilyParams):
    size: Literal["s", "m", "tiny"] = Field("s", description="PDN size: s, m (paper) or tiny (tests)")
    teacher: Literal["lite0", "lite1", "lite2", "pdn", "auto"] = Field(
        "lite0", description="frozen EfficientNet-Lite target, or a PDN distilled from it; auto: the PDN where the "
        "package ships one of the model's width (s) or teacher_weights names one, else lite0"
    )
    teacher_weights: str | None = Field(None, description="path of distilled PDN teacher weights")
    teacher_stages: tuple[int, ...] = Field((3, 4, 5), description="Lite stages of the teacher target")
    student_stages: tuple[int, ...] | None = Field(
        None, description="teacher stages the student (and autoencoder) regress; None: all (Lite teacher only)"
    )
    gaussian_stages: tuple[int, ...] | None = Field(
        None, description="teacher stages the Gaussian models; None: all (Lite teacher only)"
    )
    teacher_scale: int = Field(2, ge=1, le=4, description="Lite teacher input = scale x model input (1: 4x fewer teacher MACs at 256 px)")
    hard_quantile: float = Field(0.999, gt=0.0, lt=1.0, description="hard-feature loss quantile")
    penalty: bool = Field(True, description="penalty loss on procedural images unlike the product")
    penalty_batch: int = Field(1, ge=1, description="penalty images per step")
    gaussian: bool = Field(True, description="add a per-position Gaussian map of teacher features")
    gaussian_dims: int = Field(64, ge=1, description="PCA dimensions of the teacher features the Gaussian models")
    gaussian_grid: int = Field(32, ge=4, description="largest Gaussian grid side (teacher grid average-pooled down to it)")
    map_weights: tuple[float, float, float] = Field(
        (1.0, 1.0, 1.0), description="weights of the student-teacher, autoencoder and Gaussian maps (0 drops a map)"
    )
    global_weight: float = Field(
        1.0, ge=0.0, description="weight of the global score (Mahalanobis distance of the image's mean teacher "
        "features, PUAD) against the pooled map, both as z-scores on good images; 0 drops it"
    )
    snc: bool = Field(False, description="compare student and teacher through spatial-neighbourhood codes (FCL)")
    margin: MarginParams = Field(default_factory=MarginParams)
    pretrained_backbone: bool = Field(True, description="ImageNet weights for the Lite teacher (False: tests)")

    @model_validator(mode="after")
    def _resolve_teacher(self) -> "EfficientAdParams":
        # the PDN quantizes whole (OpenVINO INT8 10.8x its FP32 at 256 px) where the Lite teacher's depthwise
        # layers stay float (1.4x): the objects recipe asks for it wherever one exists (docs/benchmarks.md)
        if self.teacher == "auto":
            has_pdn = self.teacher_weights is not None or default_teacher_path(self.size).is_file()
            lite_only = self.student_stages is not None or self.gaussian_stages is not None
            self.teacher = "pdn" if has_pdn and not lite_only else "lite0"
        return self


# variants are data: the CLI model name maps to parameter overrides
VARIANTS: dict[str, dict[str, Any]] = {
    "efficientad-s": {"size": "s"},
    "efficientad-m": {"size": "m"},
    "efficientad-tiny": {"size": "tiny"},
}


def _stage_channels(
    name: str, chosen: tuple[int, ...] | None, tapped: tuple[int, ...], per_stage: list[int]
) -> list[int] | None:
    """Channel indices of the teacher target that belong to the chosen stages (None: all of them)."""
    if chosen is None or tuple(chosen) == tuple(tapped):
        return None
    unknown = sorted(set(chosen) - set(tapped))
    if unknown or not chosen:
        raise TrainConfigError(
            f"params.{name} {list(chosen)} must be a non-empty subset of params.teacher_stages {list(tapped)}"
        )
    starts = [sum(per_stage[:i]) for i in range(len(tapped))]
    return [starts[i] + k for i, st in enumerate(tapped) if st in chosen for k in range(per_stage[i])]


def _pick(t: torch.Tensor, channels: list[int] | None) -> torch.Tensor:
    return t if channels is None else t[:, channels]


def _jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One of brightness / contrast / saturation with a factor in [0.8, 1.2] (reference AE augmentation)."""
    k = int(torch.randint(3, (1,), generator=gen))
    f = float(torch.empty(1).uniform_(0.8, 1.2, generator=gen))
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    if k == 0:
        y = x * f
    elif k == 1:
        y = grey.mean(dim=(2, 3), keepdim=True) + f * (x - grey.mean(dim=(2, 3), keepdim=True))
    else:
        y = grey + f * (x - grey)
    return y.clamp(0, 1)


@register
class EfficientAd(AnomalyModel):
    family = "efficientad"
    bf16_ok = True  # bench.train_speed: same AUROC per step in bf16 + channels-last (docs/benchmarks.md)
    Params = EfficientAdParams

    def __init__(self, params: EfficientAdParams, size_px: int, seed: int = 0) -> None:
        self.params = params
        self.use_ae = params.map_weights[1] > 0
        self.use_gauss = params.gaussian and params.map_weights[2] > 0
        # 0 only in the config of a fit whose chosen fusion left the student out (drop_unweighted_branches)
        self.use_student = params.map_weights[0] > 0
        if not self.use_student and (self.use_ae or not self.use_gauss):
            raise TrainConfigError("params.map_weights: the student-teacher map (first weight) must be > 0")
        on = (self.use_student, self.use_ae, self.use_gauss)
        weights = [w for w, used in zip(params.map_weights, on) if used]
        super().__init__(size_px, n_maps=len(weights), params=params)
        self.map_weight.copy_(torch.tensor(weights) / sum(weights))
        self.grid = pdn_grid(size_px)
        if params.teacher == "pdn":
            if params.student_stages is not None or params.gaussian_stages is not None:
                raise TrainConfigError(
                    "params.student_stages / gaussian_stages select Lite stages: use them with --teacher lite0|lite1|lite2"
                )
            self.teacher: nn.Module = load_pdn_teacher(params.size, params.teacher_weights)
            t_channels = self.teacher.net[-1].out_channels
            self.st_channels: list[int] | None = None
            self.g_channels: list[int] | None = None
        else:
            self.teacher = LiteTarget(
                params.teacher, size_px, self.grid, params.teacher_stages, scale=params.teacher_scale,
                pretrained=params.pretrained_backbone,
            )
            t_channels = self.teacher.out_channels
            per_stage = self.teacher.backbone.channels
            self.st_channels = _stage_channels("student_stages", params.student_stages, params.teacher_stages, per_stage)
            self.g_channels = _stage_channels("gaussian_stages", params.gaussian_stages, params.teacher_stages, per_stage)
        channels = t_channels if self.st_channels is None else len(self.st_channels)
        g_channels = t_channels if self.g_channels is None else len(self.g_channels)
        self.channels = channels
        self.student = Pdn(2 * channels if self.use_ae else channels, PDN_WIDTHS[params.size]) if self.use_student else None
        self.ae = Autoencoder(size_px, channels, self.grid) if self.use_ae else None
        self.snc = SncHead(channels) if params.snc else None
        self.register_buffer("t_mean", torch.zeros(1, t_channels, 1, 1))
        self.register_buffer("t_std", torch.ones(1, t_channels, 1, 1))
        if self.use_gauss:
            self.g_pool = -(-self.grid // params.gaussian_grid)  # ceil: the Gaussian grid never exceeds gaussian_grid
            g = self.grid // self.g_pool
            d = min(params.gaussian_dims, g_channels)
            self.register_buffer("g_proj", torch.eye(g_channels)[:d].view(d, g_channels, 1, 1))
            self.register_buffer("g_mean", torch.zeros(1, d, g, g))
            self.register_buffer("g_whiten", torch.eye(d).expand(g * g, d, d).clone())
        self._global_w = params.global_weight
        if params.global_weight > 0:
            self.register_buffer("gl_mean", torch.zeros(1, t_channels))
            self.register_buffer("gl_whiten", torch.eye(t_channels))
        self._gen = torch.Generator().manual_seed(seed)
        self._penalty = PenaltyImages(size_px, seed) if params.penalty else None
        self._cache: torch.Tensor | None = None

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, "variant": f"efficientad-{self.params.size}", "params": self.params.model_dump()}

    def equalize_channels(self, good_images: torch.Tensor) -> None:
        for net in (self.teacher, self.student):
            if isinstance(net, Pdn):
                equalize_channels(net, good_images)

    def trainable_parameters(self) -> list[nn.Parameter]:
        if self.student is None:
            raise TrainConfigError("params.map_weights: the first weight (the student-teacher map) is 0, so nothing "
                                   "trains; set it > 0 (a fit leaves the student out when its chosen fusion weighs it 0)")
        return super().trainable_parameters()

    def _teacher(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = self.teacher(image)
            if t.shape[-1] != self.grid:
                t = F.interpolate(t, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
            return (t - self.t_mean) / self.t_std

    @torch.no_grad()
    def prepare(self, train_images: torch.Tensor, progress: bool = True) -> None:
        from tqdm import tqdm

        feats = []
        self.t_mean.zero_()
        self.t_std.fill_(1.0)
        for i in tqdm(range(0, len(train_images), 8), desc="teacher features", disable=not progress):
            feats.append(self._teacher(train_images[i : i + 8]))
        raw = torch.cat(feats)
        self.t_mean.copy_(raw.mean(dim=(0, 2, 3), keepdim=True))
        self.t_std.copy_(raw.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6))
        self._cache = (raw - self.t_mean) / self.t_std
        if self.use_gauss:
            self._fit_gaussian(_pick(self._cache, self.g_channels))
        if self.params.global_weight > 0:
            self._fit_global(self._cache.mean(dim=(2, 3)))

    def global_weight(self) -> float:
        return self._global_w

    def fusion_options(self) -> list[dict[str, Any]]:
        # the map weights are chosen on the selection set, the global weight is the recipe's: the selection
        # set ranked map weights as the test labels did on ELPV but ranked global weights backwards on the
        # synthetic parts (its logical changes are visible to the local maps; bench.selection, docs/benchmarks.md)
        own = list(self.params.map_weights)
        options = [own]
        st, ae, gauss = own
        if self.use_ae:  # without the autoencoder's map: textures have no context for it to learn (ELPV)
            options.append([st, 0.0, 2 * gauss] if self.use_gauss else [st, 0.0, 0.0])
        if self.use_gauss and not self.use_ae and self.use_student:
            # textures: the Gaussian alone, as a student a short budget barely trained adds noise (ELPV at 10 and
            # 60 min: it scored as high alone as fused with the student), and the student then leaves the model
            # with most of the device's time (drop_unweighted_branches). Not with the autoencoder: on the synthetic
            # parts the selection set preferred the Gaussian-led fusion and it cost 0.02 AUPRO
            options.append([0.0, ae, gauss])
        return [{"map_weights": m, "global_weight": self.params.global_weight} for m in options]

    def apply_fusion(self, option: dict[str, Any], good: list[RawOutputs]) -> None:
        if not option:
            return
        st, ae, gauss = option["map_weights"]
        present = [st] * self.use_student + [ae] * self.use_ae + [gauss] * self.use_gauss
        self.map_weight.copy_(torch.tensor(present) / sum(present))
        self._global_w = float(option["global_weight"])
        self._fit_global_gain(good)

    def needs_training(self, option: dict[str, Any]) -> bool:
        st, ae, _ = option["map_weights"]
        return st > 0 or ae > 0  # the Gaussian map and the global branch are fitted before training

    def drop_unweighted_branches(self, option: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        if not option:
            return {}, []
        weights = tuple(float(w) for w in option["map_weights"])
        notes = []
        # the autoencoder's map entered the score times 0: without it (and the student's half that regresses it)
        # every output is the same, and the device skips about a sixth of the MACs (PDN-S objects model at
        # 256 px: 38.6 -> 32.5 GMAC). PDN-M keeps it: its student ends in a 1x1 over both halves, which Pdn(c)
        # cannot rebuild.
        if self.use_ae and weights[1] <= 0 and len(PDN_WIDTHS[self.params.size]) == 3:
            assert self.student is not None
            keep_outputs(self.student, self.channels)
            self.ae, self.use_ae = None, False
            self._drop_map(1)
            notes.append(f"autoencoder: the chosen fusion {list(weights)} weighs its map 0, so it and the student's "
                         "half that regresses it are left out of the model and its exported graph (scores unchanged)")
        # the Gaussian map alone: the student was most of the texture recipe's device time (ORT INT8: 64 %)
        if self.use_student and not self.use_ae and weights[0] <= 0:
            self.student, self.use_student = None, False
            self._drop_map(0)
            notes.append(f"student: the chosen fusion {list(weights)} weighs its map 0 (the training-free maps "
                         "scored best without it), so the trained student is left out of the model and its exported "
                         "graph (scores unchanged)")
        if not notes:
            return {}, []
        self.params = self.params.model_copy(update={"map_weights": weights})
        return {"map_weights": list(weights)}, notes

    def _fit_global(self, x: torch.Tensor) -> None:
        """Gaussian of the images' mean teacher features (PUAD's global branch: a missing, extra or swapped part
        changes what the image contains, which no local map sees)."""
        mean, whiten = global_gaussian(x)
        self.gl_mean.copy_(mean)
        self.gl_whiten.copy_(whiten)

    def _gauss_features(self, t_norm: torch.Tensor) -> torch.Tensor:
        """Teacher features pooled to the Gaussian grid and PCA-projected, minus the per-position mean."""
        t_norm = _pick(t_norm, self.g_channels)
        if self.g_pool > 1:
            t_norm = F.avg_pool2d(t_norm, self.g_pool)
        return F.conv2d(t_norm, self.g_proj) - self.g_mean

    def _gauss_map(self, t_norm: torch.Tensor) -> torch.Tensor:
        """Per-position Mahalanobis map B x 1 x g x g: |W_p z_p|^2 / d, one batched matrix product."""
        z = self._gauss_features(t_norm)
        b, _, gh, gw = z.shape
        w = self.g_whiten @ z.flatten(2).permute(2, 1, 0)  # (HW, d, d) @ (HW, d, B)
        return w.pow(2).mean(dim=1).T.reshape(b, 1, gh, gw)

    def _fit_gaussian(self, t: torch.Tensor) -> None:
        """PaDiM-style: PCA of the good teacher features (pooled to the Gaussian grid), then one covariance per
        grid position, stored as whitenings so the map is |W z|^2 / d: batched matrix products only."""
        d = self.g_proj.shape[0]
        pooled = F.avg_pool2d(t, self.g_pool) if self.g_pool > 1 else t
        if d < t.shape[1]:
            self.g_proj.copy_(pca_projection(pooled, d))
        mean, whiten = position_gaussians(F.conv2d(pooled, self.g_proj))
        self.g_mean.copy_(mean)
        self.g_whiten.copy_(whiten)

    def raw_maps(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.raw(image)[0]

    def raw(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        t_norm = self._teacher(image)
        maps = []
        if self.student is not None:
            s = self.student(image)
            c = self.channels
            t, s_st = _pick(t_norm, self.st_channels), s[:, :c]
            if self.snc is not None:
                t, s_st = self.snc(t), self.snc(s_st)
            maps.append((t - s_st).pow(2).mean(dim=1, keepdim=True))
            if self.ae is not None:
                maps.append((self.ae(image) - s[:, c:]).pow(2).mean(dim=1, keepdim=True))
        if self.use_gauss:
            maps.append(self._gauss_map(t_norm))
        if self.params.global_weight <= 0:
            return maps, None
        z = (t_norm.mean(dim=(2, 3)) - self.gl_mean) @ self.gl_whiten.T
        return maps, z.pow(2).mean(dim=1)

    def training_losses(self, batch: TrainBatch, done: float) -> dict[str, torch.Tensor]:
        assert self._cache is not None, "prepare() must run before training"
        p = self.params
        img = batch.images
        b, c = img.shape[0], self.channels
        # the cache stays in host memory (a whole dataset's features); only the batch's rows go to the device
        t = _pick(self._cache[batch.index], self.st_channels).to(img.device)
        inputs = [img]
        if self.ae is not None:
            aug = _jitter(img, self._gen)
            t_aug = _pick(self._teacher(aug), self.st_channels)
            inputs.append(aug)
        n_product = sum(len(x) for x in inputs)
        if self._penalty is not None:
            inputs.append(self._penalty.sample(p.penalty_batch).to(img.device))
        assert self.student is not None, "trainable_parameters() refuses a model without a student"
        s_all = self.student(torch.cat(inputs))
        s_st = s_all[:b, :c]
        t_cmp, s_cmp = (self.snc(t), self.snc(s_st)) if self.snc is not None else (t, s_st)
        d = (t_cmp - s_cmp).pow(2)
        flat = d.flatten()
        if flat.numel() > 2**24:
            flat = flat[torch.randint(flat.numel(), (2**24,), generator=self._gen)]
        d_hard = torch.quantile(flat.detach(), p.hard_quantile)
        losses = {"hard": d[d >= d_hard].mean()}
        if self._penalty is not None:
            losses["penalty"] = s_all[n_product:, :c].pow(2).mean()
        if self.ae is not None:
            losses.update(self._ae_losses(aug, t_aug, s_all[b : 2 * b, c:]))
        losses["loss"] = sum(losses.values())  # type: ignore[assignment]
        return losses

    def _ae_losses(self, aug: torch.Tensor, t_aug: torch.Tensor, s_ae_aug: torch.Tensor) -> dict[str, torch.Tensor]:
        """Autoencoder and student-autoencoder losses, with the DFSC margin constraint when enabled."""
        assert self.ae is not None
        p = self.params
        losses: dict[str, torch.Tensor] = {}
        a = self.ae(aug)
        d_ta = (t_aug - a).pow(2)
        if p.margin.enabled:
            tau = torch.quantile(d_ta.detach().flatten()[: 2**24], p.margin.quantile)
            distinctive = d_ta.detach() > tau
            losses["ae"] = (d_ta * (~distinctive)).sum() / (~distinctive).sum().clamp_min(1)
            if p.margin.mode == "hinge" and distinctive.any():
                losses["separation"] = p.margin.weight * F.relu(p.margin.margin - d_ta[distinctive]).mean()
        else:
            losses["ae"] = d_ta.mean()
        losses["st_ae"] = (a - s_ae_aug).pow(2).mean()
        return losses
