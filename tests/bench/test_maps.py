"""The eval-only map diagnostics agree with the model's own score and split the student's error by stage."""

from __future__ import annotations

import numpy as np
import pytest

from bench.maps import diagnose_gaussian, diagnose_run


def test_run_diagnosis_matches_the_exported_score_and_covers_every_stage(tiny_run, tiny_data):
    from training.data import open_dataset
    from training.inference import load_images, score_images
    from training.metrics import auroc
    from training.run import load_run

    rows = diagnose_run(tiny_run, tiny_data)
    by_name = {r["map"]: r for r in rows}
    state = load_run(tiny_run)
    ds = open_dataset(tiny_data, seed=state.config.seed)
    _, scores = score_images(state.model, load_images(ds.test, 64))
    expected = auroc(np.array([s.label for s in ds.test]), scores)
    assert by_name["fused (exported score)"]["max"] == pytest.approx(expected, abs=1e-4)
    assert {"student-teacher", "autoencoder", "gaussian"} <= set(by_name)
    stages = [r for r in rows if "stage" in r["map"]]
    assert [r["map"][-6] for r in stages] == ["3", "4", "5"]
    assert all(0.0 <= r["max"] <= 1.0 and r["good_residual"] > 0 for r in stages)


def test_gaussian_diagnosis_fits_each_setting(tiny_data):
    rows = diagnose_gaussian(tiny_data, 64, [{"pretrained_backbone": False, "gaussian_dims": 4},
                                             {"pretrained_backbone": False, "gaussian_dims": 8, "teacher_stages": [3, 4]}])
    assert [r["map"].split()[4] for r in rows] == ["gaussian_dims=4", "gaussian_dims=8"]
    assert all(0.0 <= r["max"] <= 1.0 for r in rows)


def test_gaussian_ensemble_scores_each_combination(tiny_data):
    sets = [{"pretrained_backbone": False, "gaussian_dims": 4},
            {"pretrained_backbone": False, "gaussian_dims": 4, "px": 48}]
    rows = diagnose_gaussian(tiny_data, 64, sets, ensemble=True)
    assert [r["map"].split()[2] for r in rows[:2]] == ["px=64", "px=48"]  # a set may bring its own size
    assert len(rows) == 3 and " + " in rows[2]["map"] and 0.0 <= rows[2]["top1%"] <= 1.0


def test_position_diagnosis_recalibrates_both_ways_and_reproduces_the_run(tiny_run, tiny_data):
    from training.data import open_dataset
    from training.inference import load_images, score_images
    from training.metrics import auroc
    from training.run import load_run

    from bench.maps import diagnose_position_norm

    rows = diagnose_position_norm(tiny_run, tiny_data)
    state = load_run(tiny_run)
    ds = open_dataset(tiny_data, seed=state.config.seed)
    _, scores = score_images(state.model, load_images(ds.test, 64))
    expected = auroc(np.array([s.label for s in ds.test]), scores)
    chosen = {r["position_norm"]: r["score"] for r in rows if r["map"] == "fused, the run's choice"}
    assert chosen[False] == pytest.approx(expected, abs=1e-4)  # the run as it was saved: position_norm off
    per_flag = len(rows) // 2
    assert [r["position_norm"] for r in rows] == [False] * per_flag + [True] * per_flag
    alone = [r["map"] for r in rows[:per_flag] if r["map"].endswith(" alone")]
    assert alone == ["student-teacher alone", "autoencoder alone", "gaussian alone"]
    assert all(0.0 <= r.get("score", r.get("max")) <= 1.0 for r in rows)
