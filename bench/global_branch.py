"""Where the global branch (PUAD's pooled-feature Gaussian) helps: each map alone, the global score alone,
and their fusions, from one model trained at the defaults per dataset.

    python -m bench.global_branch --minutes 10 --out bench-out/global

One `edge-train fit` per dataset at the defaults (no params; --minutes sets the budget) except
`drop_unweighted: false`, so the autoencoder's map can be scored alone, then on the test
set: image AUROC (and per kind) of the student-teacher, autoencoder and Gaussian maps alone (the Gaussian map
alone is the training-free PaDiM-style baseline on the same features), of the pooled map score without the
global branch, of the global score alone, and of the fused score at several global weights — all from the same
forward passes, so the rows differ only in how the score is made. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine, save, table, write_elpv

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)


def measure(data: Path, out: Path, minutes: float, seed: int) -> list[dict[str, Any]]:
    """Train at the defaults on data, then AUROC of every way to make the image score."""
    import torch

    from training.config import FitConfig
    from training.data import open_dataset
    from training.inference import load_images
    from training.metrics import auroc
    from training.pipeline import train_run
    from training.selection import fusion_scores

    t0 = time.monotonic()
    ds = open_dataset(data, seed=seed)
    # the trained model is all this needs: it scores every map and fusion from its own forward passes
    # every branch kept: this table scores each map alone, the autoencoder's too
    cfg = FitConfig(max_minutes=minutes, seed=seed, checkpoint_every=10_000, drop_unweighted=False)
    state = train_run(cfg, ds, out, progress=False, export=False, evaluate=False).state
    m = state.model.eval()
    test = ds.test
    labels = np.array([t.label for t in test])
    kinds = np.array([t.kind for t in test])
    images = load_images(test, m.size_px)
    names = ["student-teacher"] + ["autoencoder"] * m.use_ae + ["gaussian"] * m.use_gauss
    per_map: list[list[torch.Tensor]] = [[] for _ in names]
    with torch.no_grad():
        good_raw = m.calibrate(load_images(ds.val, m.size_px))  # what fit calibrated on, for the fusion gains
        outs = [m.raw(images[i : i + 8]) for i in range(0, len(images), 8)]
        for maps, _ in outs:
            for k, nm in enumerate(m._normalise(maps)):
                per_map[k].append(nm.flatten(1).amax(dim=1))  # the default pooling (max), on the map's own grid
    glob = [g for _, g in outs]
    scores: dict[str, np.ndarray] = {f"{n} map alone": torch.cat(v).numpy() for n, v in zip(names, per_map)}
    scores["global alone"] = torch.cat(glob).numpy()
    own = list(m.params.map_weights)
    grid = [{"map_weights": own, "global_weight": w} for w in WEIGHTS]
    fused = fusion_scores(m, outs, good_raw, grid)
    scores.update({f"maps + {w} x global" if w else "maps (no global)": f for w, f in zip(WEIGHTS, fused)})
    rows = []
    for how, s in scores.items():
        row = {"data": data.name, "score": how, "image_auroc": round(auroc(labels, s), 4)}
        for k in sorted(set(kinds[labels == 1])):
            sel = (labels == 0) | (kinds == k)
            row[str(k)] = round(auroc(labels[sel], s[sel]), 4)
        rows.append(row)
    for r in rows:
        r.update(train_min=state.meta["train_minutes"], steps=state.meta["steps_done"],
                 wall_min=round((time.monotonic() - t0) / 60, 1))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-out/global"))
    ap.add_argument("--datasets", nargs="*", default=["synthetic", "elpv-mono", "elpv-poly"])
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget per dataset (the default command's --max-minutes)")
    ap.add_argument("--seed", type=int, default=7, help="synthetic data seed (7: not one any default was tuned on)")
    a = ap.parse_args()
    from training.synth import SynthSpec, write_synthetic

    a.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for d in a.datasets:
        print(f"[{d}] data and training ({a.minutes} min budget)", flush=True)
        path = (write_synthetic(a.out / "synthetic", SynthSpec(size_px=256, seed=a.seed)) if d == "synthetic"
                else write_elpv(a.out, d.split("-")[1], 0))
        rows += measure(path, a.out / "runs" / d, a.minutes, 0)
        save(a.out / "global.json", {"machine": machine(), "args": {k: str(v) for k, v in vars(a).items()}, "rows": rows})
        print(table([r for r in rows if r["data"] == path.name], list(rows[-1])), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
