"""`edge-train distill-teacher`: distil a PDN teacher from the EfficientNet-Lite feature target.

Replaces EfficientAD's ImageNet/WideResNet pre-training (not available offline) with the Lite target and a
corpus of procedural natural-statistics images, scikit-image's bundled photos and any user folders.
The corpus is generated once into a pool held on the training device (uint8) and every batch is a random
zoom/rotation/flip/contrast view of pool images, so a GPU is never starved by the CPU-side generators.
Resumable; CPU or CUDA (bf16 autocast there).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.data import IMAGE_SUFFIXES, load_rgb
from training.errors import TrainConfigError
from training.models.pdn import PDN_WIDTHS, Pdn, pdn_grid
from training.models.teachers import LiteTarget
from training.penalty import PenaltyImages

__all__ = ["DistillConfig", "distill_teacher"]


@dataclass
class DistillConfig:
    width: str = "s"  # PDN width: s, m or tiny
    backbone: str = "lite0"
    steps: int = 60000
    batch_size: int = 16
    lr: float = 1e-4
    seed: int = 0
    size_px: int = 256
    pool: int = 2048
    workers: int = 0  # 0: one per CPU core
    max_minutes: float | None = None


def _procedural_chunk(args: tuple[int, int, int]) -> np.ndarray:
    size_px, seed, n = args
    torch.set_num_threads(1)  # one process per core already
    return (PenaltyImages(size_px, seed).sample(n).numpy() * 255).round().astype(np.uint8)


def _procedural_pool(cfg: DistillConfig, n: int) -> torch.Tensor:
    workers = cfg.workers or os.cpu_count() or 1
    chunk = 64
    jobs = [(cfg.size_px, cfg.seed * 100003 + i, min(chunk, n - i * chunk)) for i in range(-(-n // chunk))]
    if workers == 1:
        parts = [_procedural_chunk(j) for j in jobs]
    else:
        with ProcessPoolExecutor(workers) as ex:
            parts = list(ex.map(_procedural_chunk, jobs))
    return torch.from_numpy(np.concatenate(parts))


def _folder_pool(folders: list[Path], size_px: int, limit: int) -> torch.Tensor | None:
    files = [p for d in folders for p in sorted(d.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    if folders and not files:
        raise TrainConfigError(f"no images found under {', '.join(map(str, folders))}: pass folders of PNG/JPEG/BMP/TIFF")
    if not files:
        return None
    step = max(1, len(files) // limit)
    arr = np.stack([load_rgb(p, size_px) for p in files[::step][:limit]])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _views(pool: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n random views of pool images: zoom 1-2x, rotation by multiples of 90 deg, flips, contrast/brightness."""
    idx = torch.randint(len(pool), (n,), generator=gen)
    x = pool[idx.to(pool.device)].float() / 255.0
    zoom = torch.empty(n).uniform_(0.5, 1.0, generator=gen)
    rot = torch.randint(4, (n,), generator=gen).float() * (torch.pi / 2)
    flip = torch.randint(2, (n,), generator=gen).float() * 2 - 1
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (1 - zoom)[:, None]
    cos, sin = torch.cos(rot) * zoom, torch.sin(rot) * zoom
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    contrast = torch.empty(n, 1, 1, 1).uniform_(0.7, 1.3, generator=gen).to(x.device)
    bright = torch.empty(n, 1, 1, 1).uniform_(-0.1, 0.1, generator=gen).to(x.device)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + bright).clamp(0.0, 1.0)


def distill_teacher(cfg: DistillConfig, out: Path, folders: list[Path], resume: bool = False) -> Path:
    """Train a PDN to regress the channel-standardised Lite target; writes out (fp16 weights) and out.ckpt."""
    from tqdm import tqdm

    if cfg.width not in PDN_WIDTHS:
        raise TrainConfigError(f"unknown PDN width {cfg.width!r}: use one of {', '.join(PDN_WIDTHS)}")
    torch.manual_seed(cfg.seed)
    # the pool is generated in worker processes before CUDA is touched (fork after CUDA init is unsafe)
    t0 = time.monotonic()
    own = _folder_pool(folders, cfg.size_px, cfg.pool // 2)
    procedural = _procedural_pool(cfg, cfg.pool)
    print(f"distillation pool: {len(procedural)} procedural/photo images"
          f"{f' + {len(own)} from folders' if own is not None else ''} ({time.monotonic() - t0:.0f} s)")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    procedural, own = procedural.to(device), own.to(device) if own is not None else None
    grid = pdn_grid(cfg.size_px)
    target = LiteTarget(cfg.backbone, cfg.size_px, grid).to(device).eval()
    pdn = Pdn(target.out_channels, PDN_WIDTHS[cfg.width]).to(device)
    if cuda:
        target, pdn = target.to(memory_format=torch.channels_last), pdn.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(pdn.parameters(), lr=cfg.lr, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(cfg.seed)

    def batch() -> torch.Tensor:
        n_own = cfg.batch_size // 2 if own is not None else 0
        parts = [_views(procedural, cfg.batch_size - n_own, gen)]
        if n_own:
            parts.append(_views(own, n_own, gen))
        x = torch.cat(parts)
        return x.contiguous(memory_format=torch.channels_last) if cuda else x

    def target_of(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            return target(x).float()

    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt = out.with_suffix(".ckpt")
    start = 0
    if resume and ckpt.is_file():
        st = torch.load(ckpt, map_location=device, weights_only=False)
        pdn.load_state_dict(st["pdn"])
        opt.load_state_dict(st["optim"])
        mean, std, start = st["mean"].to(device), st["std"].to(device), int(st["step"])
        gen.manual_seed(cfg.seed + start)  # fresh views after a resume, not a replay of the first ones
    else:
        feats = torch.cat([target_of(batch()) for _ in range(max(1, 256 // cfg.batch_size))])
        mean = feats.mean(dim=(0, 2, 3), keepdim=True)
        std = feats.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)

    def save_ckpt(step: int) -> None:
        torch.save({"pdn": pdn.state_dict(), "optim": opt.state_dict(), "mean": mean, "std": std, "step": step}, ckpt)

    t0 = time.monotonic()
    bar = tqdm(range(start, cfg.steps), desc="distil PDN teacher", initial=start, total=cfg.steps, mininterval=5)
    step, recent = start, []
    for step in bar:
        for g in opt.param_groups:  # lr x0.1 for the last 10 %, as EfficientAD's own schedule (resume-safe)
            g["lr"] = cfg.lr * (0.1 if step >= 0.9 * cfg.steps else 1.0)
        x = batch()
        t = (target_of(x) - mean) / std
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            pred = pdn(x)
        loss = F.mse_loss(pred.float(), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            recent = (recent + [loss.item()])[-20:]
            bar.set_postfix(loss=f"{np.mean(recent):.4f}")
        if (step + 1) % 1000 == 0:
            save_ckpt(step + 1)
        if cfg.max_minutes is not None and (time.monotonic() - t0) / 60 > cfg.max_minutes:
            bar.write(f"time budget reached at step {step + 1}")
            break
    done = step + 1
    save_ckpt(done)
    # fp16 storage halves the package data; the frozen teacher is loaded back to float32
    torch.save({"out_channels": target.out_channels,
                "state_dict": {k: v.detach().cpu().half() for k, v in pdn.state_dict().items()},
                "config": asdict(cfg), "steps_done": done, "final_loss": float(np.mean(recent)) if recent else None}, out)
    print(f"wrote PDN teacher {out} ({done} steps, loss {np.mean(recent) if recent else float('nan'):.4f})")
    return out
