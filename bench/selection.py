"""Does the label-free selection set rank a model's fusions the way real defect labels do?

    python -m bench.selection RUN [RUN ...] --out bench-out/selection

For each trained run (e.g. bench.global_branch's runs at the defaults), every fusion in a grid (the map
weights the model offers, each also with the Gaussian map's weight set to every GAUSSIAN_WEIGHTS value, x
global weights when the model has the global branch) is scored twice from the same forward passes: on the selection
set that `edge-train fit` builds from the held-out good images (training.selection), and on the run's labelled
test set. Prints per run the Spearman rank correlation of the two, the fusion the selection set picks, its
test AUROC and the best test AUROC of the grid; writes JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine, save, table

GLOBAL_WEIGHTS = (0.0, 0.5, 1.0, 2.0)
# the Gaussian map's weight (the student-teacher map's is 1): the axis the texture recipe's two options differ
# on, widened so a rank correlation has more than two points
GAUSSIAN_WEIGHTS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def measure(run: Path) -> dict[str, Any]:
    """Selection and test AUROC of every fusion in the grid for one run."""
    import torch

    from quantize.gate import spearman
    from training.data import open_dataset
    from training.inference import load_images
    from training.metrics import auroc
    from training.run import load_run
    from training.selection import fusion_scores, selection_set

    state = load_run(run)
    if (state.meta.get("fusion") or {}).get("dropped"):
        raise SystemExit(f"{run}: its fit left a branch out of the model, so its fusions cannot all be ranked; "
                         "train it with `drop_unweighted: false` (as bench.global_branch does)")
    m = state.model
    data = open_dataset(state.meta["dataset"], state.config.val_fraction, state.config.seed)
    goods = load_images(data.val, m.size_px)
    sel_images, sel_labels = selection_set(goods)
    test_images = load_images(data.test, m.size_px)
    test_labels = np.array([t.label for t in data.test])
    with torch.no_grad():
        good_raw = m.calibrate(goods)
        sel_raw = [m.raw(sel_images[i : i + 8]) for i in range(0, len(sel_images), 8)]
        test_raw = [m.raw(test_images[i : i + 8]) for i in range(0, len(test_images), 8)]
        maps = {tuple(o["map_weights"]) for o in m.fusion_options()}
        if getattr(m, "use_gauss", False):  # EfficientAD with its Gaussian map
            maps |= {(*mw[:-1], g) for mw in maps for g in GAUSSIAN_WEIGHTS}
        has_global = any(o["global_weight"] > 0 for o in m.fusion_options())
        grid = [{"map_weights": list(mw), "global_weight": w}
                for mw in sorted(maps, reverse=True) for w in (GLOBAL_WEIGHTS if has_global else (0.0,))]
        s_sel = fusion_scores(m, sel_raw, good_raw, grid)
        s_test = fusion_scores(m, test_raw, good_raw, grid)
        rows = [{**o, "selection_auroc": round(auroc(sel_labels, a), 4), "test_auroc": round(auroc(test_labels, b), 4)}
                for o, a, b in zip(grid, s_sel, s_test)]
    sel = np.array([r["selection_auroc"] for r in rows])
    test = np.array([r["test_auroc"] for r in rows])
    pick = int(np.argmax(sel))
    default = next(i for i, r in enumerate(rows) if r["map_weights"] == list(state.model.params.map_weights)
                   and r["global_weight"] == state.model.params.global_weight)
    return {"run": str(run), "data": Path(state.meta["dataset"]).name, "n_candidates": len(rows),
            "spearman": round(spearman(sel, test), 3), "picked": rows[pick], "picked_test_auroc": rows[pick]["test_auroc"],
            "default_test_auroc": rows[default]["test_auroc"], "best_test_auroc": float(test.max()), "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="trained run folders (their dataset has labelled test images)")
    ap.add_argument("--out", type=Path, default=Path("bench-out/selection"))
    a = ap.parse_args()
    results = []
    for run in a.runs:
        print(f"[{run}] selection set and test set, every fusion", flush=True)
        results.append(measure(run))
        print(table(results[-1]["rows"], list(results[-1]["rows"][0])), flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    save(a.out / "selection.json", {"machine": machine(), "results": results})
    print(table([{k: v for k, v in r.items() if k not in ("rows", "run")} for r in results],
                ["data", "n_candidates", "spearman", "picked", "picked_test_auroc", "default_test_auroc", "best_test_auroc"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
