"""`--recipe auto` (the default): choose between the objects and texture recipes from the good images alone.

The rule is one image statistic, because the label-free selection set could not be trusted to rank whole recipes
(bench.selection: it ranked the global branch backwards on ELPV). The statistic is the *content spread*: the
share of the teacher's feature variance that is variation between whole good images (their mean features), as
against variation across positions inside them. An assembly photographed the same way every time contains the
same things in every image, so its spread is small and the image-level global branch can see a missing, extra or
swapped part (objects recipe). Good parts that differ as wholes — brightness, crystal pattern, grain — have a
large spread: the global branch would flag normal variation, and local maps carry detection (texture recipe).
Measured by bench.auto_recipe (docs/benchmarks.md, "Which recipe does --recipe auto choose?").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["SPREAD_THRESHOLD", "MIN_IMAGES", "content_spread", "choose_recipe"]

# synthetic assembled parts 0.0036-0.0040 (four generator seeds); ELPV poly 0.019, mono 0.034 (two splits each):
# the threshold sits near their geometric mean, a factor of 2-3 from each
SPREAD_THRESHOLD = 0.01
MIN_IMAGES = 8  # fewer good images than this: the spread is noise and objects is kept
MAX_IMAGES = 60  # enough for a stable figure (seeds agree to 0.0004), cheap on a 2-core CPU
_STAGES = (2, 3, 4, 5)  # every Lite0 stage the objects recipe's teacher can use
# the statistic is measured at one size whatever the run trains at: image means over few positions (a 2x2 deepest
# stage at 64 px) carry within-image variation too, and tiny runs of assembled parts read as textures
STAT_SIZE_PX = 256


@torch.no_grad()
def content_spread(images: torch.Tensor) -> float:
    """Share of Lite0 feature variance that lies between images' mean features (0..1), averaged over stages.

    images: Nx3xSxS in [0, 1], N >= 2. Each channel is standardised over all images and positions first, so every
    channel counts the same and the figure does not depend on contrast."""
    from training.backbone import LiteBackbone

    backbone = LiteBackbone("lite0", _STAGES, images.shape[-1]).eval()
    feats = [torch.cat(parts) for parts in zip(*(backbone(images[i : i + 8]) for i in range(0, len(images), 8)))]
    shares = []
    for f in feats:
        f = (f - f.mean(dim=(0, 2, 3), keepdim=True)) / f.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        shares.append(float(f.mean(dim=(2, 3)).var(dim=0).mean()))
    return sum(shares) / len(shares)


def choose_recipe(data_root: str | Path, model: str, params: dict[str, Any], val_fraction: float,
                  seed: int) -> dict[str, Any]:
    """The recipe `--recipe auto` trains, with the evidence: {"chosen", "reason", and the statistic when measured}.

    params: the family parameters the user set (config file and flags); a PDN teacher rules the texture recipe
    out, whose student and Gaussian select Lite stages."""
    if not model.startswith("efficientad"):
        return {"chosen": "objects", "reason": f"the texture recipe is EfficientAD's; {model} uses its own defaults"}
    if params.get("teacher") == "pdn":
        return {"chosen": "objects", "reason": "a PDN teacher was asked for; the texture recipe needs a Lite teacher"}
    from training.data import open_dataset
    from training.inference import load_images

    train = open_dataset(data_root, val_fraction, seed).train
    if len(train) < MIN_IMAGES:
        return {"chosen": "objects", "reason": f"{len(train)} good training images (the statistic needs {MIN_IMAGES})"}
    spread = content_spread(load_images(train[:MAX_IMAGES], STAT_SIZE_PX))
    texture = spread > SPREAD_THRESHOLD
    why = ("good images differ as wholes (brightness, pattern): the global branch would flag normal variation"
           if texture else "good images contain the same things: the global branch can see missing or extra parts")
    return {"chosen": "texture" if texture else "objects", "reason": why, "content_spread": round(spread, 5),
            "threshold": SPREAD_THRESHOLD, "images": min(len(train), MAX_IMAGES)}
