"""Helpers shared by the benchmarks: ELPV splits written as image folders, tables, model cost counting."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np


def write_elpv(out: Path, cell_type: str, seed: int = 0, train_fraction: float = 0.7) -> Path:
    """ELPV protocol: 70 % of the functional cells of a type (seed permutation) for training (10 % of those held
    out for calibration), the other 30 % vs every probability-1.0 cell of that type for testing."""
    from elpv_dataset.utils import load_dataset
    from PIL import Image

    root = out / f"elpv-{cell_type}"
    if (root / "README.txt").is_file():
        return root
    images, proba, types = load_dataset()
    good = np.nonzero((proba == 0) & (types == cell_type))[0]
    bad = np.nonzero((proba == 1.0) & (types == cell_type))[0]
    perm = np.random.default_rng(seed).permutation(good)
    n_train = int(round(len(perm) * train_fraction))
    for sub, idx in (("good", perm[:n_train]), ("test/good", perm[n_train:]), ("test/defective", bad)):
        d = root / sub
        d.mkdir(parents=True, exist_ok=True)
        for i in idx:
            Image.fromarray(images[i]).save(d / f"cell{i:04d}.png")
    (root / "README.txt").write_text(f"ELPV {cell_type}: CC-BY-NC-SA-4.0, benchmark use only\n")
    return root


def conv_gmac(model: Any, size: int) -> float:
    """Multiply-accumulates of Conv/Linear layers for one image, in GMAC (hooks on a forward pass)."""
    import torch

    total = 0

    def hook(m: Any, inp: Any, out: Any) -> None:
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            total += out.numel() * k
        elif isinstance(m, torch.nn.Linear):
            total += out.numel() * m.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.rand(1, 3, size, size))
    for h in hs:
        h.remove()
    return total / 1e9


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "commit": rev}


def table(rows: list[dict[str, Any]], cols: list[str], digits: int = 3) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.{digits}f}" if abs(v) < 100 else f"{v:.1f}"
        return "-" if v is None else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in cols]
    head = "| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths)) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def save(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
