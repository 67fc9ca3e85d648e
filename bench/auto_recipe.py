"""Which recipe does `--recipe auto` choose, and how far is each dataset from the threshold?

    python -m bench.auto_recipe --out bench-out/auto-recipe

For synthetic assembled parts (several generator seeds) and ELPV mono/poly (several splits), prints the content
spread that training.recipes.auto measures on the good training images, the recipe it picks and the margin to
the threshold (spread / threshold; texture above 1); writes JSON. Training-free, a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.common import machine, save, table, write_elpv


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-out/auto-recipe"))
    ap.add_argument("--synthetic-seeds", type=int, nargs="*", default=[0, 3, 7, 100])
    ap.add_argument("--elpv-splits", type=int, nargs="*", default=[0, 1])
    a = ap.parse_args()
    from training.recipes.auto import choose_recipe
    from training.synth import SynthSpec, write_synthetic

    sets: list[tuple[str, Path]] = []
    for s in a.synthetic_seeds:
        sets.append((f"synthetic seed {s}", write_synthetic(a.out / f"synthetic-{s}", SynthSpec(size_px=256, seed=s))))
    for s in a.elpv_splits:
        for kind in ("mono", "poly"):
            sets.append((f"ELPV {kind} split {s}", write_elpv(a.out / f"elpv-split{s}", kind, s)))
    rows = []
    for name, root in sets:
        t0 = time.monotonic()
        c = choose_recipe(root, "efficientad-s", {}, 0.1, 0)
        rows.append({"dataset": name, "content_spread": c["content_spread"], "margin": round(c["content_spread"] / c["threshold"], 2),
                     "chosen": c["chosen"], "images": c["images"], "seconds": round(time.monotonic() - t0, 1)})
        print(rows[-1], flush=True)
    save(a.out / "auto_recipe.json", {"machine": machine(), "args": {k: str(v) for k, v in vars(a).items()}, "rows": rows})
    print(table(rows, ["dataset", "content_spread", "margin", "chosen", "images", "seconds"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
