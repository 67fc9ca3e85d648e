"""Choosing without defect labels: a selection set of held-out good images with synthetic defects, and the
choice of how a trained model fuses its maps and its global score.

Structural defects are drawn or pasted (blobs, scratches, foreign patches) and blended in at graded strengths,
from plain to faint; logical ones change what the image contains (a region moved, duplicated, removed or
recoloured). Every fusion a model offers is scored on the same forward passes, so choosing costs one pass over
the selection set, no training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["COPIES_PER_GOOD", "STRENGTHS", "choose_fusion", "fusion_scores", "logical_defects", "selection_set", "structural_defects"]

# blend strengths of the structural defects: full-strength ones are found by every sensible candidate, so
# only the faint rungs tell candidates apart
STRENGTHS = (0.25, 0.5, 1.0)
COPIES_PER_GOOD = len(STRENGTHS) + 1  # defect copies selection_set makes of each good image: structural ones, a logical one


def structural_defects(goods: list[np.ndarray], size: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Synthetic defects on good images (uint8 HxWx3): blobs, scratches and foreign patches, with masks."""
    rng = np.random.default_rng(seed)
    out, masks = [], []
    for i, rgb in enumerate(goods):
        img = Image.fromarray(rgb).resize((size, size), Image.BILINEAR)
        mask = Image.new("L", (size, size), 0)
        d, dm = ImageDraw.Draw(img), ImageDraw.Draw(mask)
        cx, cy = rng.uniform(0.2, 0.8, size=2) * size
        r = rng.uniform(0.04, 0.1) * size
        kind = i % 3
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        if kind == 0:
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
            dm.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        elif kind == 1:
            x1, y1 = cx + rng.uniform(-3, 3) * r, cy + rng.uniform(-3, 3) * r
            w = max(2, size // 80)
            d.line([cx, cy, x1, y1], fill=colour, width=w)
            dm.line([cx, cy, x1, y1], fill=255, width=w + 2)
        else:
            other = Image.fromarray(goods[(i + 1) % len(goods)]).resize((size, size)).rotate(90)
            box = [int(cx - r), int(cy - r), int(cx + r), int(cy + r)]
            patch = other.crop(box).filter(ImageFilter.GaussianBlur(1))
            img.paste(patch, box[:2])
            dm.rectangle(box, fill=255)
        out.append(np.asarray(img))
        masks.append(np.asarray(mask) > 0)
    return out, np.stack(masks)


def logical_defects(goods: list[np.ndarray], size: int, seed: int) -> list[np.ndarray]:
    """Good images (uint8 HxWx3) whose content changes, not their texture: a region (a fifth to a third of the
    side) moved, duplicated, removed (filled from its blurred surroundings) or recoloured."""
    rng = np.random.default_rng(seed)
    out = []
    for i, rgb in enumerate(goods):
        img = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR)).copy()
        side = int(rng.uniform(0.2, 0.33) * size)
        y, x = (int(v) for v in rng.integers(0, size - side, 2))
        y2, x2 = (int(v) for v in rng.integers(0, size - side, 2))
        region = img[y : y + side, x : x + side].copy()
        kind = i % 4
        if kind in (0, 1):  # duplicated elsewhere; moved = duplicated, then the source removed
            img[y2 : y2 + side, x2 : x2 + side] = region
        if kind in (1, 2):  # removed: what the blurred image has there once the region's detail is gone
            blurred = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(side / 2)))
            img[y : y + side, x : x + side] = blurred[y : y + side, x : x + side]
        if kind == 3:  # recoloured: channels rotated
            img[y : y + side, x : x + side] = region[..., [1, 2, 0]]
        out.append(img)
    return out


def selection_set(goods: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Held-out good images (float Nx3xSxS in [0, 1]), each also with a structural defect at every STRENGTHS
    rung and with a logical change; labels 0 good, 1 defect."""
    size = goods.shape[-1]
    u8 = [(g.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for g in goods]
    to_t = lambda arrs: torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    parts = [goods]
    defects, _ = structural_defects(u8, size, seed + 1)
    full = to_t(defects)
    parts += [goods + a * (full - goods) for a in STRENGTHS]
    parts.append(to_t(logical_defects(u8, size, seed + 2)))
    images = torch.cat(parts)
    return images, np.r_[np.zeros(len(goods), int), np.ones(len(images) - len(goods), int)]


@torch.no_grad()
def fusion_scores(model: Any, outs: list[Any], good_raw: list[Any], options: list[dict[str, Any]]) -> list[np.ndarray]:
    """The image scores of raw outputs `outs` under each fusion option (applied in turn, fitted on good_raw);
    the model is left with the last option."""
    scores = []
    for option in options:
        model.apply_fusion(option, good_raw)
        scores.append(torch.cat([model.score_from_raw(maps, g) for maps, g in outs]).numpy())
    return scores


@torch.no_grad()
def choose_fusion(model: Any, goods: torch.Tensor, good_raw: list[Any], seed: int = 0,
                  batch_size: int = 8) -> dict[str, Any]:
    """Score every fusion the model offers on the selection set built from goods (whose raw outputs, from
    calibrate(), are good_raw), keep the best (ties: the model's own setting), apply it and return every
    candidate's selection AUROC."""
    from training.metrics import auroc

    images, labels = selection_set(goods, seed)
    defects = images[len(goods) :]
    outs = good_raw + [model.raw(defects[i : i + batch_size]) for i in range(0, len(defects), batch_size)]
    options = model.fusion_options()
    rows = [{**o, "selection_auroc": round(auroc(labels, s), 5)}
            for o, s in zip(options, fusion_scores(model, outs, good_raw, options))]
    best = max(range(len(rows)), key=lambda i: (rows[i]["selection_auroc"], -i))
    chosen = {k: v for k, v in rows[best].items() if k != "selection_auroc"}
    model.apply_fusion(chosen, good_raw)
    return {"candidates": rows, "chosen": chosen,
            "selection_set": f"{len(goods)} held-out good images, each also with a structural defect at strengths "
                             f"{list(STRENGTHS)} and a logical change (moved, duplicated, removed or recoloured region)"}
