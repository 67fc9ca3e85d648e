"""What `--max-minutes N` buys: the whole fit (images, teacher features, optimisation, calibration, fusion
choice, threshold) planned into N minutes, and what the plan measured, kept and traded written into train.json
and report.json.

The plan is made after the teacher features are cached (that time is spent and known) and before the loop.
The optimiser gets what is left after an estimate of the passes over held-out images that follow it. Only
when that buys fewer than `budget_min_steps` at the recipe's batch is the batch halved (down to BATCH_FLOOR),
while the measured step gets shorter. The default floor is low on purpose: on the synthetic parts at 5
minutes, the objects recipe's batch 8 for 39 steps (AUPRO 0.931) was not beaten by batch 2 for 173 steps
(0.924), both at image AUROC 1.000 (docs/benchmarks.md) — images seen, not steps, carry this model, so the
batch is traded only where a budget buys fewer than 30 steps, below anything measured to work. The resolution
is never traded: at 5 minutes on one core, 192 px bought 37 steps and localised worse than 256 px's 15 (AUPRO
0.908 vs 0.933, both image AUROC 1.000), and it sets the device latency and what defects the model can see."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

__all__ = ["BATCH_FLOOR", "BudgetPlan", "plan_budget", "train_minutes"]

BATCH_FLOOR = 2  # batch norm in AST/FCL's trained parts needs two images; EfficientAD's PDNs have none
MIN_GAIN = 0.9  # a halved batch is taken only if its measured step is at least 10 % shorter (timing noise)
PROBE_STEPS = 2  # real training steps per batch size tried; the first pays kernel set-up, the second is timed


@dataclass
class BudgetPlan:
    """How a --max-minutes budget was spent, planned before the loop (estimates) and filled in after it."""

    max_minutes: float
    before_train_min: float  # spent before the first step: config, images, teacher features
    reserve_min: float  # estimated for what follows the last step (calibration, fusion choice, threshold)
    train_min: float  # left for the optimiser
    batch_size: int
    recipe_batch_size: int
    step_s: float | None  # measured at batch_size (None: no time was left to measure a step)
    steps_planned: int
    min_steps: int
    probes: list[dict[str, float]] = field(default_factory=list)  # batch -> seconds per step, as measured
    traded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    short: str | None = None  # why the budget could not buy min_steps, and what would
    after_train_min: float | None = None  # measured once the fit ends
    total_min: float | None = None

    def summary(self) -> str:
        """One line for the console."""
        line = (f"budget {self.max_minutes:g} min: {self.before_train_min:.1f} min images + teacher features, "
                f"~{self.reserve_min:.1f} min calibration, {self.train_min:.1f} min for ~{self.steps_planned} steps "
                f"at batch {self.batch_size}" + (f" ({self.step_s:.2f} s/step)" if self.step_s else ""))
        if self.traded:
            line += "; traded: " + "; ".join(self.traded)
        return line + (f"\n{self.short}" if self.short else "")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def train_minutes(max_minutes: float, spent_min: float, reserve_min: float) -> float:
    """Minutes of a budget left for the optimiser (the probe steps included)."""
    return max(max_minutes - spent_min - reserve_min, 0.0)


def plan_budget(max_minutes: float, spent_min: float, reserve_min: float, batch_size: int, min_steps: int,
                steps_left: int, size_px: int, time_step: Callable[[int], float]) -> BudgetPlan:
    """Choose the batch that buys at least `min_steps` in what is left of `max_minutes`.

    Args:
        spent_min: minutes already spent (before the loop; with --resume, the earlier training too).
        reserve_min: estimated minutes needed after the loop.
        batch_size: the recipe's batch (at most the number of training images: that is what a step uses).
        steps_left: optimiser steps the config still allows; probes never take more, nor more time than is left.
        time_step: runs one real training step at a batch size and returns its seconds (the steps count).
    """
    t0 = time.perf_counter()
    probes: dict[int, float] = {}
    used = 0
    min_steps = min(min_steps, steps_left)

    def left_min() -> float:
        return train_minutes(max_minutes, spent_min, reserve_min) - (time.perf_counter() - t0) / 60

    def probe(b: int) -> bool:
        """Time PROBE_STEPS real steps at batch b, if the steps and the minutes left allow them."""
        nonlocal used
        guess = probes.get(batch_size, 0.0) * b / batch_size  # a step's cost scales at most with its batch
        if used + PROBE_STEPS > steps_left or left_min() * 60 <= PROBE_STEPS * guess:
            return False
        for _ in range(PROBE_STEPS):
            s = time_step(b)
        used += PROBE_STEPS
        probes[b] = max(s, 1e-6)
        return True

    def reachable(b: int) -> int:
        return min(int(max(left_min(), 0.0) * 60 / probes[b]), steps_left - used)

    chosen = batch_size
    traded: list[str] = []
    if probe(chosen):
        while reachable(chosen) < min_steps and chosen > BATCH_FLOOR:
            smaller = max(BATCH_FLOOR, chosen // 2)
            if not probe(smaller):
                break
            if probes[smaller] > MIN_GAIN * probes[chosen]:
                break  # per-step overhead dominates here: a smaller batch buys (almost) no more steps
            traded.append(f"batch {chosen} -> {smaller}: ~{reachable(chosen)} -> ~{reachable(smaller)} steps "
                          f"({probes[chosen]:.2f} -> {probes[smaller]:.2f} s/step measured)")
            chosen = smaller
        steps = used + reachable(chosen)
    else:
        steps = used  # no time (or no steps) left to measure one: the loop takes its single step
    short = None
    if steps < min_steps:
        per_step = probes.get(chosen)
        need = (f"give it about {spent_min + reserve_min + min_steps * per_step / 60:.0f} minutes"
                if per_step else "give it more minutes")
        short = (f"--max-minutes {max_minutes:g} buys ~{steps} training steps, fewer than budget_min_steps "
                 f"({min_steps}): {need}, or expect the training-free Gaussian and global maps to carry the model")
    kept = [f"resolution {size_px} px: the threshold, the exported graph and the device latency are set for it "
            "(--size chooses it); a lower one buys steps but localised worse (docs/benchmarks.md)",
            "every branch of the recipe trains: dropping one changes what the model can see, not only its speed "
            "(a branch the fusion chosen after training weighs 0 then leaves the model: fusion.dropped)"]
    return BudgetPlan(max_minutes=max_minutes, before_train_min=round(spent_min, 3), reserve_min=round(reserve_min, 3),
                      train_min=round(train_minutes(max_minutes, spent_min, reserve_min), 3), batch_size=chosen,
                      recipe_batch_size=batch_size, step_s=round(probes[chosen], 3) if chosen in probes else None,
                      steps_planned=steps, min_steps=min_steps,
                      probes=[{"batch": b, "step_s": round(s, 3)} for b, s in probes.items()],
                      traded=traded, kept=kept, short=short)
