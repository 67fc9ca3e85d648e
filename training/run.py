"""A trained run on disk (model.pt, train.json): the calibrated model, config, threshold and provenance."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.config import FitConfig
from training.errors import TrainingError
from training.models import AnomalyModel, build_model

__all__ = ["RunState", "load_run", "load_weights", "save_run"]


@dataclass
class RunState:
    """A trained model with its config, threshold and provenance."""

    model: AnomalyModel
    config: FitConfig
    threshold: float
    fingerprint: str
    meta: dict[str, Any]

    def threshold_basis(self) -> dict[str, Any]:
        """How far the threshold can be trusted (runs trained before it was recorded: from their held-out count)."""
        from training.report import threshold_basis

        basis = self.meta.get("threshold_basis")
        return basis or threshold_basis(int(self.meta.get("n_val", 0)), self.config.false_alarm_rate)


def save_run(out: Path, state: RunState) -> None:
    """Write out/model.pt (weights, config, threshold, provenance) and out/train.json (provenance alone)."""
    torch.save(
        {"config": state.config.model_dump(), "state_dict": state.model.state_dict(),
         "threshold": state.threshold, "fingerprint": state.fingerprint, "meta": state.meta},
        out / "model.pt",
    )
    (out / "train.json").write_text(json.dumps(state.meta, indent=2))


def load_weights(model: AnomalyModel, state_dict: dict[str, Any]) -> None:
    """Load weights saved by this or an earlier release into a freshly built model (runs and checkpoints saved
    before the per-position scale existed get a flat one, which scores as they did)."""
    state_dict.setdefault("pos_scale", model.pos_scale)
    model.load_state_dict(state_dict)


def load_run(run: Path) -> RunState:
    """Load a trained run folder (model.pt) back into a calibrated model."""
    p = Path(run) / "model.pt"
    if not p.is_file():
        raise TrainingError(f"{p}: no trained model; run `edge-train fit ... --out {run}` first")
    saved = torch.load(p, map_location="cpu", weights_only=False)
    cfg = FitConfig(**saved["config"])
    model = build_model(cfg.model, cfg.params, cfg.size_px, cfg.seed)
    load_weights(model, saved["state_dict"])
    # a fitted scale is what calibration used (it stays flat when position_norm is off), whatever the default
    # was when the run was saved
    model.position_norm = model.position_norm or not bool(torch.all(model.pos_scale == 1))
    model.eval()
    return RunState(model, cfg, float(saved["threshold"]), saved["fingerprint"], saved["meta"])
