"""Named training recipes: YAML files shipped in this package (`edge-train recipes` lists them).

A recipe is a set of `edge-train fit` settings with the figures it reached and the command that measured
them. `fit --recipe NAME` starts from it; a `--config` file and flags override it. The default, `auto`, is not a
file: it chooses one of them from the good images (training.recipes.auto).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from training.errors import TrainConfigError

__all__ = ["AUTO", "DEFAULT_RECIPE", "Recipe", "load_recipe", "recipe_names"]

AUTO = "auto"
DEFAULT_RECIPE = AUTO


class Measured(BaseModel):
    """One figure a recipe reached, and how."""

    model_config = ConfigDict(extra="forbid")
    dataset: str
    figures: dict[str, float]
    budget: str
    date: str
    command: str


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    summary: str
    config: dict[str, Any] = Field(default_factory=dict, description="edge-train fit settings (the --config keys)")
    measured: list[Measured] = Field(default_factory=list)


def recipe_names() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(f.name[:-5] for f in resources.files(__name__).iterdir() if f.name.endswith(".yaml"))


def load_recipe(name: str) -> Recipe:
    """The shipped recipe called name; an unknown name is a one-line error listing the known ones."""
    if name not in recipe_names():
        raise TrainConfigError(f"unknown recipe {name!r}: choose one of {', '.join(recipe_names())} (edge-train recipes)")
    text = resources.files(__name__).joinpath(f"{name}.yaml").read_text()
    return Recipe(name=name, **yaml.safe_load(text))
