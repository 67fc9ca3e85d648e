"""--max-minutes: the planner's trades on step times we choose, and a real fit that records its plan."""

from __future__ import annotations

import json

import pytest

from training.budget import BATCH_FLOOR, PROBE_STEPS, plan_budget


def _stepper(seconds_per_image: float, overhead: float = 0.0):
    calls: list[int] = []

    def time_step(batch: int) -> float:
        calls.append(batch)
        return overhead + seconds_per_image * batch

    return time_step, calls


def test_a_budget_that_buys_enough_steps_keeps_the_recipe_batch():
    step, calls = _stepper(0.1)  # 0.8 s/step at batch 8: 9 min buy ~675 steps
    plan = plan_budget(10, spent_min=0.5, reserve_min=0.5, batch_size=8, min_steps=100, size_px=256, time_step=step)
    assert plan.batch_size == 8 and plan.traded == [] and plan.short is None
    assert 600 <= plan.steps_planned <= 675 and plan.train_min == pytest.approx(9.0)
    assert calls == [8] * PROBE_STEPS  # the probe steps are real training steps, counted once


def test_a_tight_budget_halves_the_batch_until_it_buys_the_steps():
    step, calls = _stepper(1.0)  # 8 s/step at batch 8: 5 min buy ~37 steps; batch 2 buys ~150
    plan = plan_budget(6, spent_min=0.5, reserve_min=0.5, batch_size=8, min_steps=100, size_px=256, time_step=step)
    assert plan.batch_size == 2 and plan.recipe_batch_size == 8
    assert [p["batch"] for p in plan.probes] == [8, 4, 2] and calls == [8, 8, 4, 4, 2, 2]
    assert len(plan.traded) == 2 and plan.traded[0].startswith("batch 8 -> 4")
    assert plan.steps_planned >= 100 and plan.short is None
    assert any("resolution 256 px" in k for k in plan.kept)  # what was not traded is said too
    json.dumps(plan.to_json())  # goes into train.json / report.json as is


def test_a_smaller_batch_that_buys_no_steps_is_not_taken():
    step, calls = _stepper(0.0, overhead=8.0)  # per-step overhead only: halving the batch gains nothing
    plan = plan_budget(6, spent_min=0.5, reserve_min=0.5, batch_size=8, min_steps=100, size_px=256, time_step=step)
    assert plan.batch_size == 8 and plan.traded == [] and [p["batch"] for p in plan.probes] == [8, 4]
    assert plan.short is not None and "--max-minutes 6" in plan.short


def test_a_budget_spent_before_training_says_what_it_would_take():
    step, _ = _stepper(1.0)
    plan = plan_budget(1, spent_min=1.5, reserve_min=0.2, batch_size=8, min_steps=100, size_px=256, time_step=step)
    assert plan.steps_planned == 0 and plan.train_min == 0 and plan.batch_size == BATCH_FLOOR
    # 1.5 spent + 0.2 reserve + 100 steps x 2 s at the floor batch: about 5 minutes
    assert "give it about 5 minutes" in plan.short


def test_fit_spends_its_budget_as_planned_and_reports_it(tmp_path, tiny_data):
    from training.config import FitConfig
    from training.data import open_dataset
    from training.loop import fit

    cfg = FitConfig(model="efficientad-tiny", params={"pretrained_backbone": False, "teacher": "lite0"}, size_px=64,
                    steps=100_000, batch_size=8, max_minutes=0.3, budget_min_steps=1_000_000, select_fusion=False)
    state = fit(cfg, open_dataset(tiny_data), tmp_path, progress=False)
    budget = json.loads((tmp_path / "train.json").read_text())["budget"]
    assert budget["batch_size"] in [p["batch"] for p in budget["probes"]] and budget["probes"][0]["batch"] == 8
    assert budget["short"] and "1000000" in budget["short"]  # an unreachable step count is said, not hidden
    assert state.meta["train_minutes"] >= budget["train_min"] - 0.01 > 0  # (train.json rounds to 0.01 min)
    assert state.meta["steps_done"] >= PROBE_STEPS and budget["total_min"] >= budget["after_train_min"] >= 0
    no_budget = fit(cfg.model_copy(update={"max_minutes": None, "steps": 3}), open_dataset(tiny_data),
                    tmp_path / "steps", progress=False)
    assert no_budget.meta["budget"] is None and no_budget.meta["steps_done"] == 3
