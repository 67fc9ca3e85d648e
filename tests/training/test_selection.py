"""The label-free selection set and the fusion chosen on it."""

import json

import numpy as np
import pytest
import torch

from training.models import build_model
from training.selection import STRENGTHS, choose_fusion, logical_defects, selection_set, structural_defects


def _goods(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = 0.6 + 0.05 * torch.randn(n, 3, 64, 64, generator=gen)
    x[:, :, 20:44, 20:44] = 0.2
    return x.clamp(0, 1)


def _scores_unchanged_and_reloads(model, cfg, rebuild, test, before, tmp_path):
    """After drop_unweighted_branches: the same map and score as before, and the saved config (with the
    rebuild params) rebuilds a model that scores the same; returns that reloaded model."""
    from training.run import RunState, load_run, save_run

    with torch.no_grad():
        after = model(test)
    assert torch.allclose(before[0], after[0], atol=1e-6) and torch.allclose(before[1], after[1], atol=1e-6)
    cfg = cfg.model_copy(update={"params": {**cfg.params, **rebuild}})
    save_run(tmp_path, RunState(model, cfg, 0.5, "fp", {}))
    loaded = load_run(tmp_path).model
    with torch.no_grad():
        assert torch.allclose(loaded(test)[1], after[1], atol=1e-6)
    return loaded


def test_selection_set_holds_the_goods_then_graded_structural_and_logical_defects():
    goods = _goods(5)
    images, labels = selection_set(goods)
    n = len(goods)
    assert images.shape == (n * (2 + len(STRENGTHS)), 3, 64, 64) and labels.tolist() == [0] * n + [1] * (len(images) - n)
    assert torch.equal(images[:n], goods)
    from training.selection import COPIES_PER_GOOD

    assert len(images) == n * (1 + COPIES_PER_GOOD)  # what fit's budget counts as passes after training
    # a stronger rung departs further from its good image
    d = [float((images[n * (k + 1) : n * (k + 2)] - goods).abs().sum()) for k in range(len(STRENGTHS))]
    assert d == sorted(d) and d[0] > 0
    assert float((images[-n:] - goods).abs().amax(dim=(1, 2, 3)).min()) > 0.05  # every logical change shows


def test_defect_generators_are_seeded_and_change_the_image():
    u8 = [(g.permute(1, 2, 0).numpy() * 255).astype(np.uint8) for g in _goods(4)]
    a, masks = structural_defects(u8, 64, 3)
    b, _ = structural_defects(u8, 64, 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and masks.any(axis=(1, 2)).all()
    logical = logical_defects(u8, 64, 3)
    assert all(not np.array_equal(x, g) for x, g in zip(logical, u8))


def test_fusion_choice_scores_each_option_applies_the_best_and_keeps_the_recipe_on_a_tie():
    torch.manual_seed(0)
    model = build_model("efficientad-tiny", {"pretrained_backbone": False}, 64).eval()
    model.prepare(_goods(12), progress=False)
    val = _goods(8, seed=1)
    good_raw = model.calibrate(val)
    res = choose_fusion(model, val, good_raw)
    options = model.fusion_options()
    assert [{k: v for k, v in c.items() if k != "selection_auroc"} for c in res["candidates"]] == options
    assert [o["map_weights"] for o in options] == [[1.0, 1.0, 1.0], [1.0, 0.0, 2.0]]
    # without the autoencoder (texture recipe) the Gaussian map alone is offered too
    texture = build_model("efficientad-tiny", {"pretrained_backbone": False, "map_weights": [1, 0, 2]}, 64)
    assert [o["map_weights"] for o in texture.fusion_options()] == [[1.0, 0.0, 2.0], [0.0, 0.0, 2.0]]
    best = max(c["selection_auroc"] for c in res["candidates"])
    first_best = next(c for c in res["candidates"] if c["selection_auroc"] == best)
    assert res["chosen"]["map_weights"] == first_best["map_weights"]
    st, ae, gauss = res["chosen"]["map_weights"]
    assert model.map_weight.tolist() == pytest.approx([st / (st + ae + gauss), ae / (st + ae + gauss), gauss / (st + ae + gauss)])
    # the score the exported model gives is the chosen fusion's
    with torch.no_grad():
        maps, g = model.raw(val[:2])
        assert torch.allclose(model(val[:2])[1], model.score_from_raw(maps, g))


def test_fit_records_why_no_fusion_was_chosen_with_few_held_out_images(tiny_run):
    from training.run import load_run

    fusion = load_run(tiny_run).meta["fusion"]
    assert "held-out good images" in fusion["skipped"]


@pytest.mark.parametrize("params", [{}, {"position_norm": True}, {"snc": True, "global_weight": 0},
                                    {"student_stages": [3]}])
def test_a_branch_the_chosen_fusion_weighs_zero_leaves_the_model_scores_unchanged_and_reloads(params, tmp_path):
    from training.config import FitConfig

    torch.manual_seed(0)
    cfg = FitConfig(model="efficientad-tiny", params={"pretrained_backbone": False, **params}, size_px=64)
    model = build_model(cfg.model, cfg.params, cfg.size_px).eval()
    model.prepare(_goods(12), progress=False)
    val = torch.cat([_goods(8, seed=1), _goods(4, seed=2).flip(-2)])  # goods that vary by position
    good_raw = model.calibrate(val)
    if params.get("position_norm"):
        assert not torch.all(model.pos_scale == 1)  # a re-indexing mistake would show
    own, without_ae = model.fusion_options()
    # a fusion that keeps every map drops nothing
    assert model.drop_unweighted_branches(own) == ({}, []) and model.ae is not None
    model.apply_fusion(without_ae, good_raw)
    test = torch.cat([val[:2], _goods(2, seed=5).flip(-1)])
    with torch.no_grad():
        before = model(test)
    n_params = sum(p.numel() for p in model.parameters())
    rebuild, notes = model.drop_unweighted_branches(without_ae)
    assert rebuild == {"map_weights": [1.0, 0.0, 2.0]} and "autoencoder" in notes[0]
    assert model.ae is None and model.student.net[-1].out_channels == model.channels
    assert len(model.map_weight) == len(model.q_lo) == len(model.pos_scale) == 2
    assert sum(p.numel() for p in model.parameters()) < n_params
    assert _scores_unchanged_and_reloads(model, cfg, rebuild, test, before, tmp_path).ae is None


def test_pdn_m_keeps_its_autoencoder_whatever_the_fusion():
    # its student ends in a 1x1 over both halves, which a student of half the outputs cannot rebuild
    model = build_model("efficientad-m", {"pretrained_backbone": False, "teacher": "lite0"}, 64)
    assert model.drop_unweighted_branches(model.fusion_options()[1]) == ({}, []) and model.ae is not None


def test_fit_leaves_out_the_branch_its_chosen_fusion_weighs_zero_and_the_export_matches(tiny_data, tmp_path, monkeypatch):
    """The fit's path after the choice (config, export parity with ORT, reload, report); the choice itself is
    forced, as which fusion a tiny model's selection set prefers is not up to the test."""
    import training.loop
    from training.config import FitConfig
    from training.data import open_dataset
    from training.pipeline import train_run
    from training.run import load_run

    def choose_without_ae(model, val, good_raw, cfg):
        option = model.fusion_options()[1]
        model.apply_fusion(option, good_raw)
        return {"chosen": option, "candidates": []}

    monkeypatch.setattr(training.loop, "_choose_fusion", choose_without_ae)
    cfg = FitConfig(model="efficientad-tiny", params={"pretrained_backbone": False}, size_px=64, steps=4, batch_size=2)
    result = train_run(cfg, open_dataset(tiny_data), tmp_path, progress=False)  # raises if ORT disagrees
    assert result.state.model.ae is None and result.state.config.params["map_weights"] == [1.0, 0.0, 2.0]
    assert "autoencoder" in result.report["fusion"]["dropped"][0]
    assert load_run(tmp_path).model.ae is None
    card = json.loads((tmp_path / "model.json").read_text())
    assert len(card["normalisation"]["map_weight"]) == 2


@pytest.mark.parametrize("params", [{}, {"position_norm": True}, {"student_stages": [3]}])
def test_a_student_the_chosen_fusion_weighs_zero_leaves_the_model_scores_unchanged_and_reloads(params, tmp_path):
    from training.config import FitConfig

    torch.manual_seed(0)
    cfg = FitConfig(model="efficientad-tiny", params={"pretrained_backbone": False, "map_weights": [1, 0, 2],
                                                      "global_weight": 0.5, **params}, size_px=64)
    model = build_model(cfg.model, cfg.params, cfg.size_px).eval()
    model.prepare(_goods(12), progress=False)
    val = torch.cat([_goods(8, seed=1), _goods(4, seed=2).flip(-2)])
    good_raw = model.calibrate(val)
    gaussian_alone = model.fusion_options()[-1]
    assert gaussian_alone["map_weights"][0] == 0
    model.apply_fusion(gaussian_alone, good_raw)
    test = torch.cat([val[:2], _goods(2, seed=5).flip(-1)])
    with torch.no_grad():
        before = model(test)
    rebuild, notes = model.drop_unweighted_branches(gaussian_alone)
    assert rebuild == {"map_weights": [0.0, 0.0, 2.0]} and notes[0].startswith("student:")
    assert model.student is None and not any(p.requires_grad for p in model.parameters())
    assert len(model.map_weight) == len(model.q_lo) == len(model.pos_scale) == 1
    assert _scores_unchanged_and_reloads(model, cfg, rebuild, test, before, tmp_path).student is None


def test_a_config_with_nothing_to_train_is_refused_before_the_features_are_cached(tiny_data, tmp_path, monkeypatch):
    from training.config import FitConfig
    from training.data import open_dataset
    from training.errors import TrainConfigError
    from training.loop import fit
    from training.models.efficientad import EfficientAd

    def never(*_):
        raise AssertionError("prepare() ran")

    monkeypatch.setattr(EfficientAd, "prepare", never)
    cfg = FitConfig(model="efficientad-tiny", params={"pretrained_backbone": False, "map_weights": [0, 0, 1]},
                    size_px=64, steps=2)
    with pytest.raises(TrainConfigError, match="nothing trains"):
        fit(cfg, open_dataset(tiny_data), tmp_path, progress=False)
    # without the Gaussian map there is no model at all
    with pytest.raises(TrainConfigError, match="must be > 0"):
        build_model("efficientad-tiny", {"pretrained_backbone": False, "map_weights": [0, 1, 1]}, 64)


def test_fit_leaves_out_a_student_its_chosen_fusion_weighs_zero_and_the_export_matches(tiny_data, tmp_path,
                                                                                       monkeypatch):
    import training.loop
    from training.config import FitConfig
    from training.data import open_dataset
    from training.pipeline import train_run
    from training.run import load_run

    def choose_gaussian_alone(model, val, good_raw, cfg):
        option = model.fusion_options()[-1]
        model.apply_fusion(option, good_raw)
        return {"chosen": option, "candidates": []}

    monkeypatch.setattr(training.loop, "_choose_fusion", choose_gaussian_alone)
    cfg = FitConfig(model="efficientad-tiny", params={"pretrained_backbone": False, "map_weights": [1, 0, 2]},
                    size_px=64, steps=4, batch_size=2)
    result = train_run(cfg, open_dataset(tiny_data), tmp_path, progress=False)  # raises if ORT disagrees
    assert result.state.model.student is None and result.state.config.params["map_weights"] == [0.0, 0.0, 2.0]
    assert result.report["fusion"]["dropped"][0].startswith("student:")
    assert load_run(tmp_path).model.student is None
    card = json.loads((tmp_path / "model.json").read_text())
    assert len(card["normalisation"]["map_weight"]) == 1


@pytest.mark.parametrize("forced, stops", [(-1, True), (0, False)])
def test_a_budgeted_fit_asks_the_selection_set_half_way_and_stops_training_only_for_training_free_maps(
        forced, stops, tiny_data, tmp_path, monkeypatch):
    """ELPV at 10 minutes trained a student for 6-7 minutes that the selection set then dropped. Which fusion a
    tiny model's selection set prefers is not up to the test, so the choice is forced: the Gaussian map alone
    (no trained map: training stops) or the recipe's own fusion (training goes on to the budget's end)."""
    import training.loop
    from training.config import FitConfig
    from training.data import open_dataset
    from training.loop import fit

    calls = []

    def forced_choice(model, val, good_raw, cfg):
        calls.append(model.training)
        option = model.fusion_options()[forced]
        model.apply_fusion(option, good_raw)
        return {"chosen": option, "candidates": []}

    monkeypatch.setattr(training.loop, "_choose_fusion", forced_choice)
    monkeypatch.setattr(training.loop, "MIN_SELECTION_IMAGES", 2)  # tiny_data holds out 6 good images
    cfg = FitConfig(model="efficientad-tiny", params={"pretrained_backbone": False, "map_weights": [1, 0, 2]},
                    size_px=64, steps=100_000, batch_size=2, max_minutes=0.4, precision="fp32")
    meta = fit(cfg, open_dataset(tiny_data), tmp_path, progress=False).meta
    check = meta["selection_check"]
    assert calls == [False, False]  # asked once part-way, once after training; in eval mode both times
    assert check["stopped"] is stops and 0 < check["at_step"] and check["train_budget_min"] > 0 <= check["took_min"]
    assert check["at_min"] >= 0.5 * check["train_budget_min"]
    if stops:
        assert meta["steps_done"] == check["at_step"] and meta["train_minutes"] < 0.8 * check["train_budget_min"]
        assert meta["budget"]["traded"] == [check["note"]] and "training stopped at step" in check["note"]
        assert meta["fusion"]["dropped"][0].startswith("student:")
    else:
        assert meta["steps_done"] > check["at_step"] and "note" not in check
        assert meta["train_minutes"] >= check["train_budget_min"] and meta["budget"]["traded"] == []


def test_the_selection_set_is_asked_part_way_only_where_a_fusion_needs_no_training():
    from training.config import FitConfig
    from training.loop import _selection_check_at

    val = _goods(8)
    texture = FitConfig(model="efficientad-tiny", params={"pretrained_backbone": False, "map_weights": [1, 0, 2]})
    objects = FitConfig(model="efficientad-tiny", params={"pretrained_backbone": False})  # with its autoencoder
    build = lambda c: build_model(c.model, c.params, 64)  # noqa: E731
    assert _selection_check_at(build(texture), val, texture, 10.0) == 5.0
    assert _selection_check_at(build(texture), val, texture, None) is None  # no --max-minutes
    assert _selection_check_at(build(texture), val[:4], texture, 10.0) is None  # too few held-out images
    off = texture.model_copy(update={"selection_check": None})
    assert _selection_check_at(build(off), val, off, 10.0) is None
    assert _selection_check_at(build(objects), val, objects, 10.0) is None  # every fusion needs its student
