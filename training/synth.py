"""Synthetic product images in the MVTec LOCO AD layout, deterministic from a seed.

The product is a brushed-metal tray holding two round nuts (left) and one bracket (right). Two part
combinations are valid: orange nuts with a blue bracket, or green nuts with a red bracket. Structural
defects damage the surface or a part (scratch, contamination, broken part); logical anomalies break the
assembly rule while every part looks locally normal (missing, extra or misplaced part, wrong combination).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SynthSpec", "write_synthetic", "STRUCTURAL", "LOGICAL"]

STRUCTURAL = ("scratch", "contamination", "broken_part")
LOGICAL = ("missing_part", "extra_part", "misplaced_part", "wrong_combination")
_COMBOS = (((230, 130, 40), (50, 90, 210)), ((60, 170, 70), (200, 50, 50)))  # (nut colour, bracket colour)


@dataclass(frozen=True)
class SynthSpec:
    """How many images of each split to write, their size and the seed."""

    size_px: int = 256
    n_train: int = 60
    n_val: int = 20
    n_test_good: int = 30
    n_structural: int = 30
    n_logical: int = 30
    seed: int = 0


@dataclass
class _Part:
    shape: str  # "nut" or "bracket"
    cx: float
    cy: float
    r: float
    colour: tuple[int, int, int]


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    base = rng.uniform(120, 140)
    rows = rng.normal(0, 6, size=(s, 1)).repeat(s, axis=1)  # brushed along x
    noise = rng.normal(0, 3, size=(s, s))
    grad = np.linspace(-6, 6, s)[None, :] * rng.uniform(-1, 1)
    grey = np.clip(base + rows + noise + grad, 0, 255)
    img = np.stack([grey, grey, grey * 1.02], axis=2)
    # tray rim
    m = int(s * 0.04)
    img[:m], img[-m:], img[:, :m], img[:, -m:] = 90, 90, 90, 90
    return img


def _layout(rng: np.random.Generator, s: int) -> list[_Part]:
    nut, bracket = _COMBOS[int(rng.integers(2))]
    j = lambda: rng.uniform(-0.025, 0.025) * s  # noqa: E731 - tiny positional jitter
    r_nut = s * rng.uniform(0.10, 0.11)
    return [
        _Part("nut", s * 0.28 + j(), s * 0.28 + j(), r_nut, nut),
        _Part("nut", s * 0.28 + j(), s * 0.72 + j(), r_nut, nut),
        _Part("bracket", s * 0.70 + j(), s * 0.50 + j(), s * rng.uniform(0.17, 0.18), bracket),
    ]


def _shade(colour: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    k = rng.uniform(0.92, 1.08)
    return tuple(int(np.clip(c * k, 0, 255)) for c in colour)  # type: ignore[return-value]


def _draw_part(draw: ImageDraw.ImageDraw, p: _Part, rng: np.random.Generator) -> None:
    c = _shade(p.colour, rng)
    if p.shape == "nut":
        draw.ellipse([p.cx - p.r, p.cy - p.r, p.cx + p.r, p.cy + p.r], fill=c, outline=(40, 40, 40), width=2)
        h = p.r * 0.4
        draw.ellipse([p.cx - h, p.cy - h, p.cx + h, p.cy + h], fill=(70, 70, 70))
    else:
        w, h = p.r * 0.55, p.r
        draw.rectangle([p.cx - w, p.cy - h, p.cx + w, p.cy + h], fill=c, outline=(40, 40, 40), width=2)
        for dy in (-0.6, 0.6):
            y = p.cy + dy * h
            draw.ellipse([p.cx - 0.2 * w, y - 0.2 * w, p.cx + 0.2 * w, y + 0.2 * w], fill=(70, 70, 70))


def _part_mask(p: _Part, s: int) -> Image.Image:
    m = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(m)
    if p.shape == "nut":
        d.ellipse([p.cx - p.r, p.cy - p.r, p.cx + p.r, p.cy + p.r], fill=255)
    else:
        d.rectangle([p.cx - p.r * 0.55, p.cy - p.r, p.cx + p.r * 0.55, p.cy + p.r], fill=255)
    return m


def _render(parts: list[_Part], rng: np.random.Generator, s: int) -> Image.Image:
    img = Image.fromarray(_background(rng, s).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for p in parts:
        _draw_part(draw, p, rng)
    return img


def _structural(kind: str, rng: np.random.Generator, s: int) -> tuple[Image.Image, Image.Image]:
    parts = _layout(rng, s)
    img = _render(parts, rng, s)
    mask = Image.new("L", (s, s), 0)
    dm, di = ImageDraw.Draw(mask), ImageDraw.Draw(img)
    if kind == "scratch":
        x0, y0 = rng.uniform(0.15, 0.85, size=2) * s
        ang, length = rng.uniform(0, np.pi), rng.uniform(0.15, 0.3) * s
        x1, y1 = x0 + np.cos(ang) * length, y0 + np.sin(ang) * length
        colour = (30, 30, 30) if rng.random() < 0.5 else (235, 235, 235)
        width = max(2, int(s * 0.012))
        di.line([x0, y0, x1, y1], fill=colour, width=width)
        dm.line([x0, y0, x1, y1], fill=255, width=width + 2)
    elif kind == "contamination":
        cx, cy = rng.uniform(0.15, 0.85, size=2) * s
        for _ in range(6):
            r = rng.uniform(0.015, 0.04) * s
            ox, oy = rng.normal(0, 0.02 * s, size=2)
            box = [cx + ox - r, cy + oy - r, cx + ox + r, cy + oy + r]
            di.ellipse(box, fill=(110, 80, 40))
            dm.ellipse(box, fill=255)
    else:  # broken_part: a chunk of one part is gone, the tray shows through
        p = parts[int(rng.integers(len(parts)))]
        bg = Image.fromarray(_background(np.random.default_rng(int(rng.integers(1 << 31))), s).astype(np.uint8))
        a0 = rng.uniform(0, 360)
        chunk = Image.new("L", (s, s), 0)
        r = p.r * 1.2
        ImageDraw.Draw(chunk).pieslice([p.cx - r, p.cy - r, p.cx + r, p.cy + r], a0, a0 + 70, fill=255)
        chunk = Image.fromarray(np.minimum(np.asarray(chunk), np.asarray(_part_mask(p, s))))
        img.paste(bg, (0, 0), chunk)
        mask = chunk
    return img, mask


def _logical(kind: str, rng: np.random.Generator, s: int) -> tuple[Image.Image, Image.Image]:
    parts = _layout(rng, s)
    marked: list[_Part] = []
    if kind == "missing_part":
        marked = [parts.pop(int(rng.integers(len(parts))))]
    elif kind == "extra_part":
        extra = _Part("nut", s * 0.5 + rng.uniform(-0.03, 0.03) * s, s * rng.choice([0.2, 0.8]), parts[0].r, parts[0].colour)
        parts.append(extra)
        marked = [extra]
    elif kind == "misplaced_part":
        # the bracket sits where the lower nut belongs and that nut sits where the bracket belongs
        b, n = parts[2], parts[1]
        moved_b = _Part("bracket", n.cx, n.cy, b.r, b.colour)
        moved_n = _Part("nut", b.cx, b.cy, n.r, n.colour)
        parts = [parts[0], moved_b, moved_n]
        marked = [moved_b, moved_n]
    else:  # wrong_combination: nuts of one valid set with the bracket of the other
        nut_c = parts[0].colour
        other = _COMBOS[1][1] if nut_c == _COMBOS[0][0] else _COMBOS[0][1]
        parts[2] = _Part("bracket", parts[2].cx, parts[2].cy, parts[2].r, other)
        marked = [parts[2]]
    img = _render(parts, rng, s)
    mask = np.zeros((s, s), dtype=np.uint8)
    for p in marked:
        mask = np.maximum(mask, np.asarray(_part_mask(p, s)))
    return img, Image.fromarray(mask)


def write_synthetic(out: str | Path, spec: SynthSpec = SynthSpec(), progress: bool = False) -> Path:
    """Write a synthetic dataset in the MVTec LOCO AD layout under out and return out."""
    root = Path(out)
    s = spec.size_px
    jobs: list[tuple[str, str, int]] = []
    jobs += [("train/good", "good", i) for i in range(spec.n_train)]
    jobs += [("validation/good", "good", i) for i in range(spec.n_val)]
    jobs += [("test/good", "good", i) for i in range(spec.n_test_good)]
    jobs += [("test/structural_anomalies", STRUCTURAL[i % len(STRUCTURAL)], i) for i in range(spec.n_structural)]
    jobs += [("test/logical_anomalies", LOGICAL[i % len(LOGICAL)], i) for i in range(spec.n_logical)]
    for split_id, (folder, kind, i) in enumerate(jobs):
        # one independent stream per image: the same seed always yields the same file
        rng = np.random.default_rng([spec.seed, split_id])
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        name = f"{i:03d}"
        if kind == "good":
            _render(_layout(rng, s), rng, s).save(d / f"{name}.png")
            continue
        img, mask = (_structural if kind in STRUCTURAL else _logical)(kind, rng, s)
        img.save(d / f"{name}.png")
        gt = root / "ground_truth" / Path(folder).name / name
        gt.mkdir(parents=True, exist_ok=True)
        mask.save(gt / "000.png")
        (gt / "000.txt").unlink(missing_ok=True)
        if progress and split_id % 20 == 0:
            print(f"synth: {split_id + 1}/{len(jobs)}", flush=True)
    (root / "README.txt").write_text(
        f"Lineside synthetic dataset (MVTec LOCO AD layout), size {s}px, seed {spec.seed}.\n"
        f"structural: {', '.join(STRUCTURAL)}; logical: {', '.join(LOGICAL)}\n"
    )
    return root
