"""Which map carries the score: eval-only diagnostics of EfficientAD on a labelled test set (no training).

    python -m bench.maps run RUN --data DIR                # each map of a trained run alone, and per teacher stage
    python -m bench.maps position RUN --data DIR           # the run recalibrated with and without position_norm
    python -m bench.maps gaussian --data DIR --size 256 \\
        --set teacher=lite2 teacher_scale=1 gaussian_dims=128 --set gaussian_dims=64   # the Gaussian map alone
    python -m bench.maps gaussian --data DIR --ensemble --set teacher=lite0 --set teacher=lite2 px=320  # and summed

Prints a table of image AUROC (max and top-1 % pooling) and writes JSON beside it (`--out`). This is how the
ELPV gap was traced to the student (docs/benchmarks.md): a map that cannot beat the Gaussian alone cannot lift
the fused score.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import save, table


def _top1(maps: torch.Tensor) -> np.ndarray:
    """Image scores of a B x 1 x h x w map stack: the mean of each map's hottest 1 %."""
    flat = maps.flatten(1)
    return flat.topk(max(1, flat.shape[1] // 100), dim=1).values.mean(dim=1).numpy()


def _pooled(labels: np.ndarray, maps: torch.Tensor) -> dict[str, float]:
    """Image AUROC of a B x 1 x h x w map stack under max and top-1 % pooling."""
    from training.metrics import auroc

    return {"max": round(auroc(labels, maps.flatten(1).amax(dim=1).numpy()), 4),
            "top1%": round(auroc(labels, _top1(maps)), 4)}


def _map_names(m: Any) -> list[str]:
    """Names of a model's raw maps, in order (EfficientAD's by branch, others by number)."""
    from training.models.efficientad import EfficientAd

    if isinstance(m, EfficientAd):
        return ["student-teacher"] * m.use_student + ["autoencoder"] * m.use_ae + ["gaussian"] * m.use_gauss
    return [f"map {k}" for k in range(len(m.map_weight))]


@torch.no_grad()
def diagnose_run(run: Path, data: Path, batch: int = 8) -> list[dict[str, Any]]:
    """AUROC of a trained EfficientAD run's fused score, of each normalised map alone, and of the
    student-teacher error restricted to each Lite stage the student regresses."""
    from training.data import open_dataset
    from training.inference import load_images
    from training.metrics import auroc
    from training.models.efficientad import EfficientAd
    from training.run import load_run

    state = load_run(run)
    m = state.model.eval()
    if not isinstance(m, EfficientAd):
        raise SystemExit(f"{run}: bench.maps diagnoses EfficientAD runs; this one is {m.family}")
    ds = open_dataset(data, state.config.val_fraction, seed=state.config.seed)
    images = load_images(ds.test, state.config.size_px)
    labels = np.array([s.label for s in ds.test])
    names = _map_names(m)
    fused, scores, per_map, st_err = [], [], [], []
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        fused_map, score = m(x)
        fused.append(fused_map)
        scores.append(score)
        per_map.append(m.normalised_maps(x))
        if m.student is None:  # its fit left the student out: the Gaussian map is the model
            continue
        t = m._teacher(x)
        t = t if m.st_channels is None else t[:, m.st_channels]
        st_err.append((t - m.student(x)[:, : m.channels]).pow(2))
    # the exported score is the fused map's pooling plus the global branch's term, when the model has one
    exported = round(auroc(labels, torch.cat(scores).numpy()), 4)
    rows = [{"map": "fused (exported score)", "max": exported, "top1%": None},
            {"map": "fused map", **_pooled(labels, torch.cat(fused))}]
    for k, name in enumerate(names):
        rows.append({"map": name, **_pooled(labels, torch.cat([c[k] for c in per_map]))})
    if st_err and hasattr(m.teacher, "backbone"):
        err = torch.cat(st_err)
        stages = m.params.student_stages or m.params.teacher_stages
        widths = [w for s, w in zip(m.params.teacher_stages, m.teacher.backbone.channels) if s in stages]
        start = 0
        for s, w in zip(stages, widths):
            part = err[:, start : start + w]
            good_residual = float(part[labels == 0].mean())
            rows.append({"map": f"student-teacher, stage {s} only", **_pooled(labels, part.mean(dim=1, keepdim=True)),
                         "good_residual": round(good_residual, 3)})
            start += w
    return rows


@torch.no_grad()
def diagnose_position_norm(run: Path, data: Path, batch: int = 8) -> list[dict[str, Any]]:
    """A trained run without and with each map divided by its good-image mean per position: recalibrated both
    ways on the run's held-out good images, image AUROC (and, where the test set has masks, pixel AUROC and
    AUPRO at FPR 0.3) of the run's fusion and of every fusion it offers, and each map alone. The forward
    passes are shared, so a difference is the normalisation's alone."""
    from training.data import open_dataset
    from training.evaluate import pixel_masks
    from training.inference import load_images
    from training.metrics import auroc, aupro
    from training.run import load_run

    state = load_run(run)
    m = state.model.eval()
    ds = open_dataset(data, state.config.val_fraction, seed=state.config.seed)
    val, test = load_images(ds.val, m.size_px), load_images(ds.test, m.size_px)
    labels = np.array([s.label for s in ds.test])
    outs = [m.raw(test[i : i + batch]) for i in range(0, len(test), batch)]
    masks = keep = None
    if ds.has_masks:
        masks, keep = pixel_masks(ds.test, m.size_px)
        masks = masks[keep]
    fusions = [("the run's choice", None), *((f"weights {o['map_weights']}", o) for o in m.fusion_options() if o)]
    chosen = m.map_weight.clone()
    rows: list[dict[str, Any]] = []
    for on in (False, True):
        m.position_norm = on
        good = m.calibrate(val)
        for label, option in fusions:
            if option is None:
                m.map_weight.copy_(chosen)
                m._fit_global_gain(good)
            else:
                m.apply_fusion(option, good)
            pooled = [m._pool(m._normalise(maps)) for maps, _ in outs]
            score = torch.cat([m._add_global(s, g) for (_, s), (_, g) in zip(pooled, outs)]).numpy()
            row = {"position_norm": on, "map": f"fused, {label}", "score": round(auroc(labels, score), 4)}
            if masks is not None:
                amap = torch.cat([c for c, _ in pooled])[:, 0].numpy()[keep]
                row["pixel_auroc"] = round(auroc(masks.ravel(), amap.ravel()), 4)
                row["aupro"] = round(aupro(masks, amap, 0.3), 4)
            rows.append(row)
        for k, name in enumerate(_map_names(m)):
            rows.append({"position_norm": on, "map": f"{name} alone",
                         **_pooled(labels, torch.cat([m._normalise(maps)[k] for maps, _ in outs]))})
    return rows


@torch.no_grad()
def diagnose_gaussian(data: Path, size: int, settings: list[dict[str, Any]], seed: int = 0,
                      ensemble: bool = False) -> list[dict[str, Any]]:
    """AUROC of the per-position Gaussian map alone, fitted on the training images, for each parameter set.

    A setting may carry its own input size (`px=320`). With `ensemble`, 15 % of the training images are held
    out, each setting's top-1 % image score is z-normalised on them, and every combination of two or more
    settings is scored by the sum (the ensemble a product could ship, normalised on good images only).
    """
    from itertools import combinations

    from training.data import open_dataset
    from training.inference import load_images
    from training.metrics import auroc
    from training.models.efficientad import EfficientAd, EfficientAdParams

    ds = open_dataset(data, seed=seed)
    n_fit = int(len(ds.train) * 0.85) if ensemble else len(ds.train)
    if ensemble and len(ds.train) - n_fit < 2:
        raise SystemExit(f"{data}: --ensemble normalises on 15 % of the training images; "
                         f"{len(ds.train)} leave fewer than 2")
    fit, held = ds.train[:n_fit], ds.train[n_fit:]
    labels = np.array([s.label for s in ds.test])
    rows, z = [], {}
    for setting in settings:
        setting = dict(setting)
        px = int(setting.pop("px", size))  # not "size": that is the PDN's (s, m, tiny)
        params = EfficientAdParams(**{"map_weights": (1, 0, 1), "penalty": False, **setting})
        m = EfficientAd(params, px).eval()
        m.prepare(load_images(fit, px), progress=False)

        def maps(samples: list[Any]) -> torch.Tensor:
            return torch.cat([m._gauss_map(m._teacher(load_images(samples[i : i + 16], px)))
                              for i in range(0, len(samples), 16)])

        test_maps = maps(ds.test)
        name = f"{len(rows) + 1}: gaussian " + " ".join(f"{k}={v}" for k, v in {"px": px, **setting}.items())
        rows.append({"map": name, **_pooled(labels, test_maps)})
        print(rows[-1], flush=True)
        if ensemble:
            good = _top1(maps(held))
            z[name] = (_top1(test_maps) - good.mean()) / max(float(good.std()), 1e-12)
    for k in range(2, len(z) + 1):
        for combo in combinations(z, k):
            rows.append({"map": " + ".join(combo), "top1%": round(auroc(labels, sum(z[c] for c in combo)), 4)})
    return rows


def _setting(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected key=value, e.g. gaussian_dims=128")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="each map of a trained EfficientAD run alone")
    r.add_argument("run", type=Path)
    pn = sub.add_parser("position", help="a trained run recalibrated with and without position_norm")
    pn.add_argument("run", type=Path)
    g = sub.add_parser("gaussian", help="the per-position Gaussian alone, for parameter sets")
    g.add_argument("--size", type=int, default=256)
    g.add_argument("--set", dest="sets", nargs="+", action="append", default=[], metavar="KEY=VALUE",
                   help="one parameter set (repeat --set for several); values are JSON (128, [3, 4]) or text (lite2)")
    g.add_argument("--ensemble", action="store_true",
                   help="also score every combination of the sets, z-normalised on held-out good images")
    for p in (r, pn, g):
        p.add_argument("--data", type=Path, required=True, help="labelled dataset (folder / MVTec layout)")
        p.add_argument("--out", type=Path, default=None, help="JSON file for the rows")
    a = ap.parse_args()
    if a.cmd == "run":
        rows = diagnose_run(a.run, a.data)
    elif a.cmd == "position":
        rows = diagnose_position_norm(a.run, a.data)
    else:
        rows = diagnose_gaussian(a.data, a.size, [_setting(s) for s in a.sets] or [{}], ensemble=a.ensemble)
    cols = ["position_norm", "map", "score", "pixel_auroc", "aupro", "max", "top1%", "good_residual"]
    print(table(rows, [c for c in cols if any(c in r for r in rows)], digits=4))
    if a.out:
        save(a.out, {"args": {k: str(v) for k, v in vars(a).items()}, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
