"""The arithmetic of a training run: fp32, or bf16 where the CPU runs it natively and the family allows."""

from __future__ import annotations

import torch

from training.config import FitConfig
from training.models import AnomalyModel

__all__ = ["cpu_has_bf16", "training_precision"]


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matrix work natively (AMX or AVX-512-BF16, via oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def training_precision(cfg: FitConfig, model: AnomalyModel, device: torch.device) -> str:
    """fp32 or bf16 for this run (see FitConfig.precision); CUDA keeps its own fast path (fp32 here)."""
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if device.type == "cpu" and model.bf16_ok and cpu_has_bf16() else "fp32"
