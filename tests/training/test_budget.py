"""--max-minutes: the planner's trades on step times we choose, and a real fit that records its plan."""

from __future__ import annotations

import json

import pytest

from training.budget import PROBE_STEPS, plan_budget


def _stepper(seconds_per_image: float, overhead: float = 0.0):
    calls: list[int] = []

    def time_step(batch: int) -> float:
        calls.append(batch)
        return overhead + seconds_per_image * batch

    return time_step, calls


def test_a_budget_that_buys_enough_steps_keeps_the_recipe_batch():
    step, calls = _stepper(0.1)  # 0.8 s/step at batch 8: 9 min buy ~675 steps
    plan = plan_budget(10, spent_min=0.5, reserve_min=0.5, batch_size=8, min_steps=100, steps_left=10_000, size_px=256,
                       time_step=step)
    assert plan.batch_size == 8 and plan.traded == [] and plan.short is None
    assert 600 <= plan.steps_planned <= 2 + 675 and plan.train_min == pytest.approx(9.0)
    assert calls == [8] * PROBE_STEPS  # the probe steps are real training steps, counted once


def test_a_tight_budget_halves_the_batch_until_it_buys_the_steps():
    step, calls = _stepper(1.0)  # 8 s/step at batch 8: 5 min buy ~37 steps; batch 2 buys ~150
    plan = plan_budget(6, spent_min=0.5, reserve_min=0.5, batch_size=8, min_steps=100, steps_left=10_000, size_px=256,
                       time_step=step)
    assert plan.batch_size == 2 and plan.recipe_batch_size == 8
    assert [p["batch"] for p in plan.probes] == [8, 4, 2] and calls == [8, 8, 4, 4, 2, 2]
    assert len(plan.traded) == 2 and plan.traded[0].startswith("batch 8 -> 4")
    assert plan.steps_planned >= 100 and plan.short is None
    assert any("resolution 256 px" in k for k in plan.kept)  # what was not traded is said too
    json.dumps(plan.to_json())  # goes into train.json / report.json as is


def test_a_smaller_batch_that_buys_no_steps_is_not_taken():
    step, calls = _stepper(0.0, overhead=8.0)  # per-step overhead only: halving the batch gains nothing
    plan = plan_budget(6, spent_min=0.5, reserve_min=0.5, batch_size=8, min_steps=100, steps_left=10_000, size_px=256,
                       time_step=step)
    assert plan.batch_size == 8 and plan.traded == [] and [p["batch"] for p in plan.probes] == [8, 4]
    assert plan.short is not None and "--max-minutes 6" in plan.short


def test_a_budget_spent_before_training_probes_nothing_and_says_so():
    step, calls = _stepper(1.0)
    plan = plan_budget(1, spent_min=1.5, reserve_min=0.2, batch_size=8, min_steps=100, steps_left=10_000, size_px=256,
                       time_step=step)
    assert calls == [] and plan.probes == [] and plan.traded == []  # no time: no probe, no trade for nothing
    assert plan.steps_planned == 0 and plan.train_min == 0 and plan.batch_size == 8 and plan.step_s is None
    assert "--max-minutes 1 buys ~0 training steps" in plan.short


def test_probes_never_take_more_steps_than_the_config_allows():
    step, calls = _stepper(1.0)
    plan = plan_budget(6, spent_min=0.5, reserve_min=0.5, batch_size=8, min_steps=100, steps_left=3, size_px=256,
                       time_step=step)
    assert calls == [8, 8] and plan.batch_size == 8  # a second probe would need 2 steps of the 1 left
    assert plan.min_steps == 3 and plan.steps_planned == 3 and plan.short is None


def test_a_smaller_batch_is_probed_only_if_the_minutes_left_pay_for_it():
    step, calls = _stepper(10.0)  # 80 s per step at batch 8, 1.2 min left: two batch-4 steps would take ~80 s
    plan = plan_budget(1.3, spent_min=0.05, reserve_min=0.05, batch_size=8, min_steps=100, steps_left=10_000,
                       size_px=256, time_step=step)
    assert calls == [8, 8] and plan.batch_size == 8 and plan.short


def _fit(tmp_path, tiny_data, **cfg_args):
    from training.config import FitConfig
    from training.data import open_dataset
    from training.loop import fit

    cfg = FitConfig(model="efficientad-tiny", params={"pretrained_backbone": False, "teacher": "lite0"}, size_px=64,
                    select_fusion=False, **cfg_args)
    return fit(cfg, open_dataset(tiny_data), tmp_path, progress=False)


def test_fit_records_its_plan_and_stops_at_its_deadline(tmp_path, tiny_data):
    state = _fit(tmp_path, tiny_data, steps=100_000, batch_size=8, max_minutes=0.5, budget_min_steps=1_000_000)
    budget = json.loads((tmp_path / "train.json").read_text())["budget"]
    assert budget["probes"][0]["batch"] == 8 and budget["batch_size"] in [p["batch"] for p in budget["probes"]]
    assert budget["short"] and "fewer than budget_min_steps (100000)" in budget["short"]  # an unreachable step count is said, not hidden
    # the whole fit was planned: what was spent before, what is kept for after, the rest for training
    assert budget["train_min"] == pytest.approx(0.5 - budget["before_train_min"] - budget["reserve_min"], abs=2e-3)
    assert state.meta["train_minutes"] >= budget["train_min"] - 0.01  # (train.json rounds to 0.01 min)
    assert 1 <= state.meta["steps_done"] < 100_000 and budget["total_min"] >= budget["after_train_min"] >= 0


def test_fit_with_a_budget_keeps_the_step_count_and_without_one_plans_nothing(tmp_path, tiny_data):
    capped = _fit(tmp_path / "a", tiny_data, steps=3, batch_size=8, max_minutes=5)
    assert capped.meta["steps_done"] == 3 and capped.meta["budget"]["batch_size"] == 8
    plain = _fit(tmp_path / "b", tiny_data, steps=3, batch_size=8)
    assert plain.meta["budget"] is None and plain.meta["steps_done"] == 3
