"""What an INT8 artifact was made from (the FP32 model, the images, the settings), and whether it still is.

quant.json records it under `source`; edge-deploy reuses an artifact only while all of it matches.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from edge.contract import QuantResult, QuantSource, read_model_card, sha256_file

__all__ = ["artifact_sha256", "expected_source", "stale_reason"]


def artifact_sha256(path: Path) -> str:
    """SHA-256 of an artifact, with its weights file where the format keeps one apart (OpenVINO .xml + .bin)."""
    h = hashlib.sha256(sha256_file(path).encode())
    weights = path.with_suffix(".bin")
    if path.suffix == ".xml" and weights.is_file():
        h.update(sha256_file(weights).encode())
    return h.hexdigest()


def expected_source(run: Path, runtime: str, *, device: str, max_drop: float, max_far_increase: float,
                    max_calib: int, min_spearman: float, calib_dir: Path | None = None,
                    data_dir: Path | None = None) -> QuantSource:
    """The source an artifact quantized now with these settings would record (quantize_run records this, with
    the artifact's SHA-256 once it is made)."""
    from quantize.calib import images_fingerprint
    from quantize.cli import SELECTION_STRENGTHS, SENSITIVITY_BOUNDS_DB
    from quantize.runtimes import quantizer

    card = read_model_card(run)
    if data_dir is not None:
        card = card.model_copy(update={"dataset": str(data_dir)})
    settings = {
        "runtime": runtime, "device": device, "max_drop": max_drop, "max_far_increase": max_far_increase,
        "min_spearman": min_spearman, "max_calib": max_calib, "calib_dir": str(calib_dir) if calib_dir else None,
        "false_alarm_rate_target": card.false_alarm_rate_target,
        "threshold_fp32": card.threshold,
        "selection_strengths": list(SELECTION_STRENGTHS), "sensitivity_bounds_db": list(SENSITIVITY_BOUNDS_DB),
        **quantizer(runtime).settings,
    }
    return QuantSource(model_sha256=sha256_file(run / "model.onnx"),
                       images_sha256=images_fingerprint(card, calib_dir, max_calib), settings=settings)


def stale_reason(recorded: QuantResult, qdir: Path, expected: QuantSource) -> str | None:
    """Why a quant.json's artifact must not be reused for `expected`; None when it may be."""
    src = recorded.source
    if src is None:
        return "quant.json records no source model (written before sources were recorded)"
    if src.model_sha256 != expected.model_sha256:
        return "model.onnx changed since it was quantized"
    if src.images_sha256 != expected.images_sha256:
        return "the calibration or gate images changed since it was quantized"
    old, new = src.settings, expected.settings
    keys = sorted(set(old) | set(new))
    changed = [f"{k} {old.get(k)} -> {new.get(k)}" for k in keys if old.get(k) != new.get(k)]
    if changed:
        return f"settings changed ({', '.join(changed)})"
    art = qdir / recorded.artifact
    if not art.is_file():
        return f"{art.name} is missing"
    if artifact_sha256(art) != src.artifact_sha256:
        return f"{art.name} changed since quant.json was written"
    return None
