"""Accuracy benchmark: train and evaluate model variants on fresh synthetic data and on ELPV solar cells.

    python -m bench.accuracy --minutes 8 --out bench-out/accuracy

Prints a table and writes JSON: image AUROC (logical/structural on synthetic), pixel AUROC and AUPRO where
masks exist (pooled, and per kind: structural defects vs logical anomalies), train minutes, parameters, GMAC.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.common import conv_gmac, machine, save, table, write_elpv

# name -> (model, params); the shipped recipes run as "recipe:NAME" at their own size and batch
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "efficientad-s lite0": ("efficientad-s", {"teacher": "lite0"}),
    "efficientad-s lite0 +margin": ("efficientad-s", {"teacher": "lite0", "margin": {"enabled": True, "mode": "truncate"}}),
    "efficientad-s lite0 no-gauss": ("efficientad-s", {"teacher": "lite0", "gaussian": False}),
    "efficientad-s lite0 texture": ("efficientad-s", {"teacher": "lite0", "map_weights": [1, 0, 2]}),
    "efficientad-s lite0 texture scale1": ("efficientad-s", {"teacher": "lite0", "map_weights": [1, 0, 2], "teacher_scale": 1}),
    # the student regresses only the stage its 33 px receptive field can predict; Gaussian on all three stages
    "efficientad-s lite2 texture st3": ("efficientad-s", {"teacher": "lite2", "map_weights": [1, 0, 2], "teacher_scale": 1,
                                                          "student_stages": [3], "gaussian_dims": 128}),
    "efficientad-s lite2 texture st23": ("efficientad-s", {"teacher": "lite2", "map_weights": [1, 0, 2], "teacher_scale": 1,
                                                           "teacher_stages": [2, 3, 4, 5], "student_stages": [2, 3],
                                                           "gaussian_stages": [3, 4, 5], "gaussian_dims": 128}),
    "efficientad-s lite0 +snc": ("efficientad-s", {"teacher": "lite0", "snc": True}),
    "efficientad-s pdn": ("efficientad-s", {"teacher": "pdn"}),
    "efficientad-s pdn +margin": ("efficientad-s", {"teacher": "pdn", "margin": {"enabled": True, "mode": "truncate"}}),
    "efficientad-s pdn texture": ("efficientad-s", {"teacher": "pdn", "map_weights": [1, 0, 2]}),
    "ast": ("ast", {}),
    "ast +snc": ("ast", {"snc": True}),
    "ast fine": ("ast", {"backbone_scale": 4}),
    "ast-paper": ("ast-paper", {}),
    "ast-global": ("ast-global", {}),
    "ast-global fine": ("ast-global", {"backbone_scale": 4}),
    "fcl": ("fcl", {}),
    "fcl-nosnc": ("fcl-nosnc", {}),
    "fcl-local": ("fcl-local", {}),
}

NO_TRADE = "recipe:auto no-trade"


def run_one(name: str, data: Path, out: Path, size: int, minutes: float, steps: int, batch: int, seed: int) -> dict[str, Any]:
    from training.config import FitConfig, load_fit_config
    from training.data import open_dataset
    from training.errors import TrainingError
    from training.pipeline import train_run

    if name.startswith("recipe:auto"):  # the default command: `edge-train fit --data D --max-minutes M`
        # "no-trade": the same with the batch kept whatever the budget buys (what the plan's batch trade is worth)
        extra = {"budget_min_steps": 1} if name == NO_TRADE else {}
        cfg = load_fit_config(None, {"max_minutes": minutes, "seed": seed, "checkpoint_every": 10_000, **extra},
                              data=data)
        size = cfg.size_px
    elif name.startswith("recipe:"):
        cfg = load_fit_config(None, {"recipe": name.split(":", 1)[1], "steps": steps, "max_minutes": minutes,
                                     "seed": seed, "checkpoint_every": 10_000})
        size = cfg.size_px
    else:
        model, params = VARIANTS[name]
        cfg = FitConfig(model=model, params=params, size_px=size, steps=steps, batch_size=batch, max_minutes=minutes,
                        seed=seed, checkpoint_every=10_000)
    t0 = time.monotonic()
    try:
        # what `edge-train fit` writes (the speed benchmark and edge-quantize reuse these runs), with the
        # export's parity checked on held-out images as the CLI's is
        result = train_run(cfg, open_dataset(data, seed=seed), out, progress=False)
    except TrainingError as err:
        return {"variant": name, "data": data.name, "error": str(err)}
    state, rep = result.state, result.report
    m = state.model
    trainable = sum(p.numel() for p in m.parameters())
    row = {"variant": name, "data": data.name, "recipe": cfg.recipe, "size_px": size, "image_auroc": rep["image_auroc"],
           "logical": rep["image_auroc_by_kind"].get("logical"), "structural": rep["image_auroc_by_kind"].get("structural"),
           "pixel_auroc": rep.get("pixel_auroc"), "aupro": rep.get("aupro_0.3"),
           **{f"aupro_{k}": v for k, v in rep.get("aupro_by_kind", {}).items()},
           "train_min": state.meta["train_minutes"], "steps": state.meta["steps_done"],
           "batch": (state.meta.get("budget") or {}).get("batch_size", cfg.batch_size),
           "fit_min": (state.meta.get("budget") or {}).get("total_min"),
           "params_M": round(trainable / 1e6, 2), "gmac": round(conv_gmac(m, size), 2),
           "wall_min": round((time.monotonic() - t0) / 60, 1)}
    print(row, flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-out/accuracy"))
    from training.recipes import AUTO, recipe_names

    recipes = [f"recipe:{r}" for r in [AUTO, *recipe_names()]]
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS) + recipes, choices=list(VARIANTS) + recipes + [NO_TRADE])
    ap.add_argument("--datasets", nargs="*", default=["synthetic", "elpv-mono", "elpv-poly"])
    ap.add_argument("--minutes", type=float, default=60.0, help="training budget per model")
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from training.synth import SynthSpec, write_synthetic

    a.out.mkdir(parents=True, exist_ok=True)
    sets: dict[str, Path] = {}
    for d in a.datasets:
        if d == "synthetic":
            sets[d] = write_synthetic(a.out / "synthetic", SynthSpec(size_px=256, seed=a.seed + 100))
        else:
            sets[d] = write_elpv(a.out, d.split("-")[1], a.seed)
    rows = []
    for dname, path in sets.items():
        for v in a.variants:
            rows.append(run_one(v, path, a.out / "runs" / f"{dname}-{v.replace(' ', '_').replace(':', '-')}", a.size, a.minutes,
                                a.steps, a.batch, a.seed))
            save(a.out / "accuracy.json", {"machine": machine(), "args": {k: str(v) for k, v in vars(a).items()}, "rows": rows})
    cols = ["variant", "data", "recipe", "image_auroc", "logical", "structural", "pixel_auroc", "aupro", "aupro_structural",
            "aupro_logical", "train_min", "steps", "batch", "fit_min", "params_M", "gmac"]
    print(table(rows, cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
