"""The training config (YAML or CLI flags), validated with unknown keys refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.contract import field_problem, read_document
from training.errors import TrainConfigError

__all__ = ["FitConfig", "load_fit_config"]


class FitConfig(BaseModel):
    """Everything that decides a training run; saved into the run folder."""

    model_config = ConfigDict(extra="forbid")
    recipe: str | None = Field(None, description="named recipe the settings start from (edge-train recipes)")
    recipe_choice: dict[str, Any] | None = Field(
        None, description="why --recipe auto chose the recipe (written by edge-train fit, not set by hand)")
    model: str = Field("efficientad-s", description="model name, e.g. efficientad-s, efficientad-m")
    params: dict[str, Any] = Field(default_factory=dict, description="family parameters (validated by the family)")
    size_px: int = Field(256, ge=32, le=1024, description="square input size of the model")
    steps: int = Field(2000, ge=1, description="optimiser steps")
    batch_size: int = Field(8, ge=1, description="images per step")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(1e-5, ge=0, description="Adam weight decay")
    lr_drop_at: float = Field(0.95, gt=0, le=1, description="fraction of steps after which lr is divided by 10")
    seed: int = Field(0, description="seed of every random choice")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="good images held out when the layout has no validation set")
    false_alarm_rate: float = Field(0.005, ge=0, lt=1, description="target false-alarm rate of the threshold on good images")
    select_fusion: bool = Field(True, description="choose how the maps are weighted on held-out good images with "
                                "synthetic defects (training.selection); off: the recipe's weights")
    drop_unweighted: bool = Field(True, description="leave out of the model a branch the chosen fusion weighs 0 "
                                  "(EfficientAD-S's autoencoder; efficientad-m keeps it): its map scored nothing, "
                                  "and the device no longer computes it")
    max_minutes: float | None = Field(
        None, gt=0, description="budget of the whole fit in minutes (images, teacher features, training, calibration): "
        "the schedule picks the batch by measured step times and fits the lr drop into it (training.budget)")
    selection_check: float | None = Field(
        0.5, gt=0, lt=1, description="share of a --max-minutes training budget after which the selection set is "
        "asked once whether a fusion of training-free maps alone (EfficientAD's Gaussian map) beats every fusion "
        "with the trained ones; if so, training stops there rather than spend the rest on a branch that adds "
        "nothing yet (the check's minutes come out of training's). null: train to the end of the budget")
    budget_min_steps: int = Field(30, ge=1, description="optimiser steps a --max-minutes budget should buy; "
                                  "below it the batch is halved while that buys more steps (training.budget)")
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: all cores)")
    device: str = Field("auto", description="cpu, cuda or auto")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="training arithmetic: auto = bf16 autocast with channels-last on CPUs with bf16 "
        "matrix units (AMX / AVX-512-BF16) for families that allow it, fp32 elsewhere; calibration, the threshold "
        "and the exported model are always fp32")


def load_fit_config(path: str | Path | None, overrides: dict[str, Any], data: str | Path | None = None) -> FitConfig:
    """Merge a recipe, a YAML file and CLI overrides (later wins) into a validated FitConfig.

    The recipe is the one the overrides or the file name, else the default (auto). `auto` looks at the good images
    under `data` (training.recipes.auto) and records its choice and evidence in `recipe_choice`."""
    from training.recipes import AUTO, DEFAULT_RECIPE

    loaded: dict[str, Any] = {}
    if path:
        p = Path(path)
        doc = read_document(p, "yaml", TrainConfigError, "config")
        if doc is not None and not isinstance(doc, dict):
            raise TrainConfigError(f"{p}: expected a mapping of keys to values at the top level")
        loaded.update(doc or {})
    name = overrides.get("recipe") or loaded.get("recipe") or DEFAULT_RECIPE
    if name != AUTO:
        return _merge(name, loaded, overrides, None)
    if data is None:
        raise TrainConfigError("recipe auto chooses from the training images: pass the dataset, or name a recipe "
                               "(edge-train recipes)")
    from training.recipes.auto import choose_recipe

    probe = _merge("objects", dict(loaded), dict(overrides), None)  # what the user set, the seed and the split
    choice = choose_recipe(data, probe.model, probe.params, probe.val_fraction, probe.seed)
    return _merge(choice["chosen"], loaded, overrides, choice)


def _merge(name: str, loaded: dict[str, Any], overrides: dict[str, Any], choice: dict[str, Any] | None) -> FitConfig:
    from training.recipes import load_recipe

    base = dict(load_recipe(name).config)
    loaded, overrides = dict(loaded), dict(overrides)
    params = {**base.pop("params", {}), **loaded.pop("params", {}), **(overrides.pop("params", None) or {})}
    merged = {**base, **loaded, **{k: v for k, v in overrides.items() if v is not None}, "recipe": name,
              "recipe_choice": choice, "params": params}
    try:
        return FitConfig(**merged)
    except ValidationError as err:
        raise TrainConfigError(f"config key {field_problem(err, keys=FitConfig.model_fields)}") from err
