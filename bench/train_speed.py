"""Training throughput at the defaults, and whether a faster arithmetic keeps the accuracy per step: the same
fit (same seed, same data, same number of steps) in fp32 and in bf16 + channels-last, timed and evaluated.

    python -m bench.train_speed --model efficientad-s --size 256 --steps 60 --repeats 1

Prints optimiser steps per minute and image AUROC (all, logical, structural) per precision, and their ratio.
The runs alternate precisions, so a noisy shared machine slows both alike.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine, save, table


def run(data: Path, out: Path, model: str, size: int, steps: int, batch: int, precision: str, seed: int) -> dict[str, Any]:
    from training.config import FitConfig
    from training.data import open_dataset
    from training.evaluate import evaluate
    from training.loop import fit

    cfg = FitConfig(model=model, size_px=size, steps=steps, batch_size=batch, precision=precision, seed=seed,
                    checkpoint_every=10_000)
    t0 = time.perf_counter()
    # fit alone, not training.pipeline.train_run: fit_wall_min times the training, not the export and report
    state = fit(cfg, open_dataset(data), out, progress=False)
    wall = time.perf_counter() - t0
    rep, _ = evaluate(state, open_dataset(data))
    kinds = rep.get("image_auroc_by_kind", {})
    train_min = float(state.meta["train_minutes"])
    return {"precision": state.meta["precision"], "steps": steps, "train_min": round(train_min, 2),
            "steps_per_min": round(steps / max(train_min, 1e-6), 2), "fit_wall_min": round(wall / 60, 2),
            "image_auroc": rep["image_auroc"], "logical": kinds.get("logical"), "structural": kinds.get("structural")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientad-s")
    ap.add_argument("--size", type=int, default=256, help="the fit default")
    ap.add_argument("--batch", type=int, default=8, help="the fit default")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=7, help="of the synthetic data and the fit")
    ap.add_argument("--out", type=Path, default=Path("bench-out/train_speed"))
    a = ap.parse_args()
    from training.precision import cpu_has_bf16
    from training.synth import SynthSpec, write_synthetic

    data = write_synthetic(a.out / "data", SynthSpec(size_px=max(256, a.size), seed=a.seed + 1000, n_train=40,
                                                     n_val=12, n_test_good=20, n_structural=20, n_logical=20))
    runs: list[dict[str, Any]] = []
    for r in range(a.repeats):
        for precision in ("fp32", "bf16"):
            row = run(data, a.out / "runs" / f"{precision}-{r}", a.model, a.size, a.steps, a.batch, precision, a.seed)
            print(row, flush=True)
            runs.append(row)
    rows = []
    for precision in ("fp32", "bf16"):
        sel = [x for x in runs if x["precision"] == precision]
        rows.append({"precision": precision, **{k: float(np.median([x[k] for x in sel])) for k in
                                                 ("steps_per_min", "image_auroc", "logical", "structural")},
                     "runs": len(sel)})
    speedup = rows[1]["steps_per_min"] / rows[0]["steps_per_min"]
    save(a.out / "train_speed.json", {"machine": machine(), "bf16_hardware": cpu_has_bf16(),
                                      "args": {k: str(v) for k, v in vars(a).items()}, "rows": rows, "runs": runs,
                                      "bf16_speedup": speedup})
    print(table(rows, list(rows[0])))
    print(f"bf16 + channels-last: {speedup:.2f}x the steps per minute of fp32 "
          f"(AUROC {rows[1]['image_auroc']:.3f} vs {rows[0]['image_auroc']:.3f} after {a.steps} steps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
