"""Named recipes: shipped YAML files, layered under --config and flags, listed by `edge-train recipes`."""

import subprocess
import sys

import pytest

from training.config import load_fit_config
from training.errors import TrainConfigError
from training.models import REGISTRY, build_model
from training.recipes import DEFAULT_RECIPE, load_recipe, recipe_names


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_recipe_is_a_valid_config_of_its_family(name):
    cfg = load_fit_config(None, {"recipe": name})
    assert cfg.recipe == name
    model_cls = REGISTRY[build_model(cfg.model, {**cfg.params, "pretrained_backbone": False}, 64).family]
    model_cls.Params(**cfg.params)  # every key known to the family, every value in range


def test_recipe_then_file_then_flags_and_the_default_is_named(tmp_path):
    assert DEFAULT_RECIPE in recipe_names() and "texture" in recipe_names()
    assert load_fit_config(None, {}).recipe == DEFAULT_RECIPE
    texture = load_recipe("texture").config
    f = tmp_path / "c.yaml"
    f.write_text("recipe: texture\nparams:\n  gaussian_dims: 32\n")
    cfg = load_fit_config(f, {"params": {"score_top": 0.05}, "batch_size": None})
    assert cfg.recipe == "texture"
    assert cfg.params["teacher"] == texture["params"]["teacher"]  # from the recipe
    assert cfg.params["gaussian_dims"] == 32  # the file overrides the recipe
    assert cfg.params["score_top"] == 0.05  # flags override both
    assert cfg.batch_size == texture["batch_size"]  # an unset flag does not


def test_unknown_recipe_is_one_line_naming_the_choices():
    with pytest.raises(TrainConfigError, match="unknown recipe 'velvet': choose one of .*texture"):
        load_fit_config(None, {"recipe": "velvet"})


def test_recipes_command_lists_each_recipe_with_its_figures_and_command():
    out = subprocess.run([sys.executable, "-m", "training.cli", "recipes"], capture_output=True, text=True, check=True).stdout
    for name in recipe_names():
        assert name in out
    for m in load_recipe("texture").measured:
        assert m.dataset in out and m.command.split()[0] in out
