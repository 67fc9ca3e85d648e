"""`edge-train distill-teacher`: distil a PDN teacher from the EfficientNet-Lite feature target.

Replaces EfficientAD's ImageNet/WideResNet pre-training (not available offline) with the Lite target and a
corpus of procedural natural-statistics images plus any user folders (random crops). Resumable; CPU or CUDA.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.data import IMAGE_SUFFIXES, load_rgb
from training.models.pdn import PDN_WIDTHS, Pdn, pdn_grid
from training.models.teachers import LiteTarget
from training.penalty import PenaltyImages

__all__ = ["DistillConfig", "distill_teacher"]


@dataclass
class DistillConfig:
    size: str = "s"
    backbone: str = "lite0"
    steps: int = 20000
    batch_size: int = 8
    lr: float = 1e-4
    seed: int = 0
    size_px: int = 256
    max_minutes: float | None = None


def _corpus(folders: list[Path], size_px: int) -> torch.Tensor | None:
    files = [p for d in folders for p in sorted(d.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        return None
    arr = np.stack([load_rgb(p, size_px) for p in files[:2000]])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def distill_teacher(cfg: DistillConfig, out: Path, folders: list[Path], resume: bool = False) -> Path:
    """Train a PDN to regress the channel-standardised Lite target; writes out (weights) and out.ckpt."""
    from tqdm import tqdm

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    grid = pdn_grid(cfg.size_px)
    target = LiteTarget(cfg.backbone, cfg.size_px, grid).to(device)
    pdn = Pdn(target.out_channels, PDN_WIDTHS[cfg.size]).to(device)
    opt = torch.optim.Adam(pdn.parameters(), lr=cfg.lr, weight_decay=1e-5)
    procedural = PenaltyImages(cfg.size_px, cfg.seed)
    own = _corpus(folders, cfg.size_px)
    gen = torch.Generator().manual_seed(cfg.seed)

    def batch() -> torch.Tensor:
        n_own = cfg.batch_size // 2 if own is not None else 0
        parts = [procedural.sample(cfg.batch_size - n_own)]
        if own is not None and n_own:
            idx = torch.randint(len(own), (n_own,), generator=gen)
            x = own[idx]
            # random resized crop: keeps product images from dominating at one scale
            c = int(torch.randint(cfg.size_px // 3, cfg.size_px + 1, (1,), generator=gen))
            y0, x0 = (int(torch.randint(cfg.size_px - c + 1, (1,), generator=gen)) for _ in range(2))
            parts.append(F.interpolate(x[:, :, y0 : y0 + c, x0 : x0 + c], size=cfg.size_px, mode="bilinear"))
        return torch.cat(parts).to(device)

    ckpt = out.with_suffix(".ckpt")
    start = 0
    with torch.no_grad():
        feats = torch.cat([target(batch()) for _ in range(8)])
        mean = feats.mean(dim=(0, 2, 3), keepdim=True)
        std = feats.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    if resume and ckpt.is_file():
        st = torch.load(ckpt, map_location=device, weights_only=False)
        pdn.load_state_dict(st["pdn"])
        opt.load_state_dict(st["optim"])
        mean, std, start = st["mean"].to(device), st["std"].to(device), int(st["step"])
    t0 = time.monotonic()
    bar = tqdm(range(start, cfg.steps), desc="distil PDN teacher", initial=start, total=cfg.steps)
    step = start
    for step in bar:
        x = batch()
        with torch.no_grad():
            t = (target(x) - mean) / std
        loss = F.mse_loss(pdn(x), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{float(loss):.4f}")
        if (step + 1) % 200 == 0 or step + 1 == cfg.steps:
            torch.save({"pdn": pdn.state_dict(), "optim": opt.state_dict(), "mean": mean, "std": std,
                        "step": step + 1}, ckpt)
        if cfg.max_minutes is not None and (time.monotonic() - t0) / 60 > cfg.max_minutes:
            bar.write(f"time budget reached at step {step + 1}")
            torch.save({"pdn": pdn.state_dict(), "optim": opt.state_dict(), "mean": mean, "std": std,
                        "step": step + 1}, ckpt)
            break
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"out_channels": target.out_channels, "state_dict": {k: v.cpu() for k, v in pdn.state_dict().items()},
                "config": asdict(cfg), "steps_done": step + 1}, out)
    print(f"wrote PDN teacher {out} ({step + 1} steps)")
    return out
