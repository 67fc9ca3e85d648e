"""Named recipes: shipped YAML files, layered under --config and flags, listed by `edge-train recipes`."""

import subprocess
import sys

import numpy as np
import pytest

from training.config import load_fit_config
from training.errors import TrainConfigError
from training.models import REGISTRY, build_model
from training.recipes import AUTO, DEFAULT_RECIPE, load_recipe, recipe_names


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_recipe_is_a_valid_config_of_its_family(name):
    cfg = load_fit_config(None, {"recipe": name})
    assert cfg.recipe == name
    model_cls = REGISTRY[build_model(cfg.model, {**cfg.params, "pretrained_backbone": False}, 64).family]
    model_cls.Params(**cfg.params)  # every key known to the family, every value in range


def test_recipe_then_file_then_flags_and_the_default_is_named(tmp_path):
    assert DEFAULT_RECIPE == AUTO and {"objects", "texture"} <= set(recipe_names())
    with pytest.raises(TrainConfigError, match="recipe auto chooses from the training images"):
        load_fit_config(None, {})
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


def _wholes(root, n, differ):
    """Good images of a product: the same tray with two parts each time, or (differ) cells that differ as
    wholes: each its own brightness and grain, as ELPV's crystal patterns do."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "good").mkdir(parents=True)
    for i in range(n):
        img = np.full((96, 96, 3), 128.0) + rng.normal(0, 3, (96, 96, 1))
        if differ:
            grain = np.kron(rng.normal(0, 40, (12, 12)), np.ones((8, 8)))[..., None]
            img = img * rng.uniform(0.4, 1.4) + grain
        else:
            img[20:44, 16:40] = (230, 130, 40)
            img[52:80, 56:80] = (50, 90, 210)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "good" / f"{i:03d}.png")
    return root


def test_auto_chooses_texture_only_when_good_images_differ_as_wholes(tmp_path):
    from training.recipes.auto import SPREAD_THRESHOLD

    same = load_fit_config(None, {"size_px": 96}, data=_wholes(tmp_path / "tray", 12, differ=False))
    varied = load_fit_config(None, {"size_px": 96}, data=_wholes(tmp_path / "cells", 12, differ=True))
    assert same.recipe == "objects" and same.recipe_choice["content_spread"] < SPREAD_THRESHOLD
    assert varied.recipe == "texture" and varied.recipe_choice["content_spread"] > SPREAD_THRESHOLD
    assert varied.params["teacher"] == load_recipe("texture").config["params"]["teacher"]
    # flags still override what auto chose, and the figure is recorded beside the choice
    flagged = load_fit_config(None, {"size_px": 96, "batch_size": 3}, data=tmp_path / "cells")
    assert flagged.recipe == "texture" and flagged.batch_size == 3 and flagged.recipe_choice["images"] == 11


def test_auto_keeps_objects_where_the_statistic_cannot_speak(tmp_path):
    few = load_fit_config(None, {"size_px": 96}, data=_wholes(tmp_path / "few", 6, differ=True))
    assert few.recipe == "objects" and "needs 8" in few.recipe_choice["reason"]
    other = load_fit_config(None, {"size_px": 96, "model": "fcl"}, data=tmp_path / "few")
    assert other.recipe == "objects" and "EfficientAD's" in other.recipe_choice["reason"]
    # the texture recipe picks Lite stages: a PDN teacher asked for keeps objects (review: it failed to build)
    cells = _wholes(tmp_path / "cells", 12, differ=True)
    pdn = load_fit_config(None, {"size_px": 96, "params": {"teacher": "pdn"}}, data=cells)
    assert pdn.recipe == "objects" and "PDN" in pdn.recipe_choice["reason"]
    build_model(pdn.model, pdn.params, 64)


def test_objects_takes_the_shipped_pdn_teacher_where_one_exists():
    """issue 15 item 4: the PDN quantizes whole; widths without a shipped PDN keep the Lite0 teacher."""
    cfg = load_fit_config(None, {"recipe": "objects"})
    assert cfg.params["teacher"] == "auto"
    assert build_model("efficientad-s", cfg.params, 64).params.teacher == "pdn"
    assert build_model("efficientad-tiny", {**cfg.params, "pretrained_backbone": False}, 64).params.teacher == "lite0"
    # Lite stage choices say the user meant a Lite teacher
    staged = {**cfg.params, "student_stages": [3], "pretrained_backbone": False}
    assert build_model("efficientad-s", staged, 64).params.teacher == "lite0"
