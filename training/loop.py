"""The training loop: prepare, optimise with checkpoints and a time budget, calibrate maps, choose the fusion,
leave out a branch it weighs 0, and set the threshold."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from training import __version__
from training.budget import BudgetPlan, plan_budget, train_minutes
from training.config import FitConfig
from training.data import Dataset
from training.inference import load_images, score_images
from training.metrics import threshold_at_far
from training.models import AnomalyModel, build_model
from training.models.base import TrainBatch
from training.precision import training_precision
from training.report import threshold_basis
from training.run import RunState, load_weights, save_run

__all__ = ["fit"]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _save_checkpoint(path: Path, model: AnomalyModel, opt: torch.optim.Optimizer, step: int, minutes: float) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "minutes": minutes, "model": model.state_dict(), "optim": opt.state_dict(),
                "rng": torch.get_rng_state()}, tmp)
    tmp.replace(path)  # atomic: a crash mid-save never leaves a half checkpoint


def fit(cfg: FitConfig, data: Dataset, out: Path, resume: bool = False, progress: bool = True) -> RunState:
    """Train, calibrate and save a model under out/ (config.yaml, model.pt, train.json, checkpoint.pt); returns it.

    resume continues from checkpoint.pt and refuses a cfg that builds another model than config.yaml records.
    The threshold comes from held-out good images only, at cfg.false_alarm_rate. training.pipeline.train_run
    adds the export and the report; call fit alone only where the trained model is all that is needed.
    """
    from tqdm import tqdm

    t_fit = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _seed_everything(cfg.seed)
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.is_file():
        _refuse_another_model(out / "config.yaml", cfg)  # before config.yaml is rewritten: it is the record
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    device = _device(cfg.device)
    model = build_model(cfg.model, cfg.params, cfg.size_px, cfg.seed)
    model.trainable_parameters()  # raises for a config with nothing to train, before minutes of feature caching
    train = load_images(data.train, cfg.size_px)
    val = load_images(data.val, cfg.size_px)
    model.prepare(train, progress=progress)
    # timed as calibration will run (CPU, fp32, contiguous), before the model moves to the training device
    reserve = _reserve_minutes(model, train, val, cfg) if cfg.max_minutes is not None else 0.0
    model.to(device)
    precision = training_precision(cfg, model, device)
    # bf16 convolutions pay only in channels-last layout (oneDNN); fp32 ones gain nothing from it (measured)
    layout = torch.channels_last if precision == "bf16" else torch.contiguous_format
    model.to(memory_format=layout)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    opt = torch.optim.Adam(model.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, minutes_before = 0, 0.0
    if resume and ckpt.is_file():
        # on the CPU: torch.set_rng_state takes a CPU tensor only, and the optimiser's state follows its parameters
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        load_weights(model, state["model"])
        opt.load_state_dict(state["optim"])
        torch.set_rng_state(state["rng"])
        start, minutes_before = int(state["step"]), float(state.get("minutes", 0.0))
    elif resume:
        print(f"--resume: no checkpoint in {out}; training from step 0")
    gen = torch.Generator().manual_seed(cfg.seed + start)
    history: list[dict[str, float]] = []
    step = start
    train_budget: float | None = None  # minutes of optimisation, the earlier ones of a resumed run included
    t0 = time.monotonic()

    def minutes() -> float:
        return minutes_before + (time.monotonic() - t0) / 60

    def done_share() -> float:
        """Share of the schedule done: whichever of the step count and the time budget runs out first sets it,
        so the lr drop and a family's phases (AST: teacher, then student) happen inside a --max-minutes run."""
        share = step / cfg.steps
        if train_budget is not None:
            share = max(share, minutes() / max(train_budget, 1e-9))
        return min(share, 1.0)

    def one_step(batch_size: int) -> None:
        """One optimiser step at batch_size."""
        nonlocal step
        for g in opt.param_groups:
            g["lr"] = cfg.lr * (0.1 if done_share() >= cfg.lr_drop_at else 1.0)
        idx = torch.randint(len(train), (min(batch_size, len(train)),), generator=gen)
        batch = TrainBatch(idx, train[idx].to(device).contiguous(memory_format=layout))
        with autocast:
            losses = model.training_losses(batch, done_share())
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        if step % 10 == 0:
            history.append({"step": step, **{k: round(float(v.detach()), 5) for k, v in losses.items()}})
        step += 1
        if step % cfg.checkpoint_every == 0:
            _save_checkpoint(ckpt, model, opt, step, minutes())

    model.train()
    plan: BudgetPlan | None = None
    batch_size = cfg.batch_size
    if cfg.max_minutes is not None and step < cfg.steps:
        def timed_step(b: int) -> float:
            t = time.perf_counter()
            one_step(b)
            return time.perf_counter() - t

        spent = minutes_before + (t0 - t_fit) / 60
        # set before the probe steps, so their lr and a family's phase follow the budget like every other step
        train_budget = minutes_before + train_minutes(cfg.max_minutes, spent, reserve)
        plan = plan_budget(cfg.max_minutes, spent, reserve, min(cfg.batch_size, len(train)), cfg.budget_min_steps,
                           cfg.steps - step, cfg.size_px, timed_step)
        batch_size = plan.batch_size
        if progress:
            print(plan.summary())
    total = min(cfg.steps, start + plan.steps_planned) if plan else cfg.steps  # the plan counts its probe steps
    bar = tqdm(desc=f"train {cfg.model}", disable=not progress, initial=step, total=total)
    check_at = _selection_check_at(model, val, cfg, train_budget)
    check: dict[str, Any] | None = None
    while step < cfg.steps:
        if train_budget is not None and minutes() > train_budget and step > start:
            bar.write(f"time budget reached at step {step} (batch {batch_size})")
            break
        if check_at is not None and check is None and minutes() >= check_at:
            assert train_budget is not None and plan is not None
            check = _selection_check(model, val, cfg, step, minutes(), train_budget)
            model.to(device, memory_format=layout).train()
            if check["stopped"]:
                bar.write(check["note"])
                plan.traded.append(check["note"])
                break
        one_step(batch_size)
        bar.update(1)
        if step % 10 == 1 and history:
            bar.set_postfix(loss=history[-1]["loss"])
    bar.close()
    steps_done = step
    trained_minutes = minutes()
    _save_checkpoint(ckpt, model, opt, steps_done, trained_minutes)
    t_calibrate = time.monotonic()
    model.to("cpu", memory_format=torch.contiguous_format).eval()
    model.equalize_channels(train)
    good_raw = model.calibrate(val)
    fusion = _choose_fusion(model, val, good_raw, cfg)
    rebuild, dropped = model.drop_unweighted_branches(fusion.get("chosen") or {}) if cfg.drop_unweighted else ({}, [])
    if dropped:
        # model.pt's config (what load_run builds); config.yaml keeps what the fit started from, the model
        # checkpoint.pt holds (written before the branch left) and the one --resume must build
        cfg = cfg.model_copy(update={"params": {**cfg.params, **rebuild}})
        fusion["dropped"] = dropped
    _, val_scores = score_images(model, val)
    threshold = threshold_at_far(val_scores, cfg.false_alarm_rate)
    meta = {
        "lineside_version": __version__,
        "steps_done": steps_done,
        "train_minutes": round(trained_minutes, 2),
        "precision": precision,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "dataset_layout": data.layout,
        "dataset": str(data.root.resolve()),
        "val_scores": [round(float(s), 6) for s in val_scores],
        "threshold_basis": threshold_basis(len(val_scores), cfg.false_alarm_rate),
        "fusion": fusion,
        "selection_check": check,
        "budget": _finish_plan(plan, t_fit, t_calibrate),
        "history": history,
    }
    state = RunState(model, cfg, threshold, data.fingerprint(), meta)
    save_run(out, state)
    return state


# what decides the model checkpoint.pt holds weights for: a resumed fit must build the same one
MODEL_FIELDS = ("model", "size_px", "params", "seed", "val_fraction")  # the last two: the initialisation and split


def _refuse_another_model(saved_config: Path, cfg: FitConfig) -> None:
    """Raise TrainConfigError when --resume would build another model than the run's checkpoint was trained as
    (other flags, recipe or --config than the run started with); no run file is written before this check."""
    from training.errors import TrainConfigError

    if not saved_config.is_file():
        return
    saved = yaml.safe_load(saved_config.read_text()) or {}
    now = cfg.model_dump()
    differ = []
    for k in MODEL_FIELDS:
        if k not in saved or saved[k] == now[k]:
            continue
        if isinstance(saved[k], dict) and isinstance(now[k], dict):
            differ += [(f"{k}.{p}", saved[k].get(p), now[k].get(p)) for p in sorted(saved[k].keys() | now[k].keys())
                       if saved[k].get(p) != now[k].get(p)]
        else:
            differ.append((k, saved[k], now[k]))
    if differ:
        show = lambda v: "unset" if v is None else v  # noqa: E731
        was = ", ".join(f"{k}={show(a)} (this command: {show(b)})" for k, a, b in differ)
        raise TrainConfigError(f"--resume: {saved_config.parent}/checkpoint.pt was trained with {was}: resume with the "
                               "flags, recipe and --config the run started with, or --overwrite to start clean")


# what follows training took 0.89 min where the pass count estimated 0.66 (objects recipe, synthetic parts,
# 2026-12-01): the channel equalisation and the fusion scoring cost more than one plain pass each
RESERVE_MARGIN = 1.35
MIN_SELECTION_IMAGES = 8  # fewer held-out good images than this: the recipe's fusion is kept as it is


def _fusion_skipped(model: AnomalyModel, val: torch.Tensor, cfg: FitConfig) -> str | None:
    """Why no fusion is chosen on the selection set for this run, or None when one is."""
    if not cfg.select_fusion:
        return "select_fusion is off: the recipe's fusion is used"
    if len(model.fusion_options()) < 2:
        return "the model offers one fusion"
    if len(val) < MIN_SELECTION_IMAGES:
        return f"{len(val)} held-out good images (a choice needs {MIN_SELECTION_IMAGES})"
    return None


def _choose_fusion(model: AnomalyModel, val: torch.Tensor, good_raw: list[Any], cfg: FitConfig) -> dict[str, Any]:
    """The fusion of maps chosen on the label-free selection set (training.selection), or why none was."""
    from training.selection import choose_fusion

    skipped = _fusion_skipped(model, val, cfg)
    if skipped:
        return {"skipped": skipped}
    return choose_fusion(model, val, good_raw, cfg.seed)


def _selection_check_at(model: AnomalyModel, val: torch.Tensor, cfg: FitConfig,
                        train_budget: float | None) -> float | None:
    """The training minute at which the selection set is asked whether training still matters, or None where it
    is not asked: no time budget, no fusion choice, or no fusion the model offers works without training."""
    if train_budget is None or cfg.selection_check is None or _fusion_skipped(model, val, cfg) is not None:
        return None
    if all(model.needs_training(o) for o in model.fusion_options()):
        return None
    return cfg.selection_check * train_budget


def _selection_check(model: AnomalyModel, val: torch.Tensor, cfg: FitConfig, step: int, at_min: float,
                     budget_min: float) -> dict[str, Any]:
    """Calibrate and choose the fusion as after training, part-way through it: stopped is True where the choice
    needs no trained map (ELPV at 10 minutes: the Gaussian map alone, after 6-7 minutes training a student that
    then left the model). What this sets (calibration buffers, fusion weights) is set again after training,
    and the minutes it takes come out of training's; the model is left on the CPU."""
    t = time.monotonic()
    model.to("cpu", memory_format=torch.contiguous_format).eval()
    fusion = _choose_fusion(model, val, model.calibrate(val), cfg)
    chosen = fusion.get("chosen")
    record: dict[str, Any] = {"at_step": step, "at_min": round(at_min, 2), "train_budget_min": round(budget_min, 2),
                              "took_min": round((time.monotonic() - t) / 60, 2),
                              "candidates": fusion.get("candidates", []), "stopped": False}
    if chosen and not model.needs_training(chosen):
        record["stopped"] = True
        record["note"] = (f"training stopped at step {step}, {at_min:.1f} of {budget_min:.1f} training minutes: "
                          f"part-way, the selection set scored map weights {chosen['map_weights']} (no trained map) "
                          "above every fusion with the trained ones, so the rest of the budget is not spent on a "
                          "branch that adds nothing yet")
    return record


@torch.no_grad()
def _reserve_minutes(model: AnomalyModel, train: torch.Tensor, val: torch.Tensor, cfg: FitConfig) -> float:
    """Estimated minutes of what follows the loop: forward passes over the held-out images (calibration, the
    threshold, and the selection set's defect copies when a fusion is chosen) and one over the training images
    (channel equalisation). Timed on a few held-out images with the prepared model on the CPU in fp32, as those
    passes run; the faster of two timed passes, after one that pays kernel set-up."""
    from training.selection import COPIES_PER_GOOD

    passes = 2 + (COPIES_PER_GOOD if _fusion_skipped(model, val, cfg) is None else 0)
    probe = val[: min(len(val), 4)]
    was_training = model.training
    model.eval()
    model.raw(probe)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        model.raw(probe)
        times.append(time.perf_counter() - t)
    model.train(was_training)
    return RESERVE_MARGIN * min(times) / len(probe) * (passes * len(val) + len(train)) / 60


def _finish_plan(plan: BudgetPlan | None, t_fit: float, t_calibrate: float) -> dict[str, Any] | None:
    """The budget plan with what the calibration and the whole fit took, for train.json and report.json."""
    if plan is None:
        return None
    now = time.monotonic()
    plan.after_train_min = round((now - t_calibrate) / 60, 3)
    plan.total_min = round((now - t_fit) / 60, 3)
    return plan.to_json()
