"""The model on the box and scoring one frame: a pure function from a frame and a loaded model to a typed result.
Nothing here touches the spool, MQTT or the sources; every per-frame fault becomes an `error` result."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge.backends import Backend, create_backend
from edge.bundle import Bundle, load_bundle, self_test
from edge.errors import EdgeError, FrameError
from edge.contract import decode_frame, to_input
from edge.postprocess import judge
from edge.signing import Trust
from edge.sources.base import Frame

__all__ = ["LoadedModel", "load_model", "frame_id", "Scored", "score_frame", "POISON_AFTER"]

POISON_AFTER = 2  # daemon deaths while scoring the same frame before it gets an error verdict instead


@dataclass
class LoadedModel:
    bundle: Bundle
    backend: Backend
    selftest: dict[str, Any]


def load_model(bundle_dir: Path, device: str, cache_dir: Path, threads: int, trust: Trust | None = None) -> LoadedModel:
    """Verify signature (when keys are trusted) and hashes, build the backend (with warm-up) and pass the golden
    self-test, or raise BundleError."""
    bundle = load_bundle(bundle_dir, trust)
    backend = create_backend(bundle.runtime, bundle.artifact, device, cache_dir, threads)
    try:
        result = self_test(bundle, backend)
    except EdgeError:
        backend.close()
        raise
    return LoadedModel(bundle, backend, result)


def frame_id(frame: Frame) -> str:
    """The verdict id of a frame: the same frame (station, identity in its source, content) always gets the same."""
    if frame.data is not None:
        content = hashlib.sha256(frame.data).hexdigest()
    elif frame.rgb is not None:
        content = hashlib.sha256(np.ascontiguousarray(frame.rgb).tobytes()).hexdigest()
    else:
        content = hashlib.sha256((frame.error or "").encode()).hexdigest()
    h = hashlib.sha256(f"{frame.station}\0{frame.identity}\0{content}".encode()).digest()
    return str(uuid.UUID(bytes=h[:16], version=5))


@dataclass
class Scored:
    """What scoring one frame found. bbox is in the frame's own pixels; rgb/anomaly_map are kept for overlays."""

    outcome: Literal["ok", "ng", "error"]
    threshold: float
    score: float | None = None
    anomaly_area: float | None = None
    bbox: list[int] | None = None
    error: str | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    rgb: np.ndarray | None = None
    anomaly_map: np.ndarray | None = None


def _to_frame_pixels(bbox: tuple[int, int, int, int], map_hw: tuple[int, int], frame_wh: tuple[int, int]) -> list[int]:
    """A box on the anomaly map's grid -> the same region in the frame's own pixels (rounded outwards)."""
    (x0, y0, x1, y1), (mh, mw), (fw, fh) = bbox, map_hw, frame_wh
    sx, sy = fw / mw, fh / mh
    return [int(np.floor(x0 * sx)), int(np.floor(y0 * sy)), min(fw, int(np.ceil(x1 * sx))),
            min(fh, int(np.ceil(y1 * sy)))]


def score_frame(frame: Frame, model: LoadedModel, threshold: float, max_pixels: int, attempts: int = 1) -> Scored:
    """Decode, run and judge one frame. attempts is the start this frame is tried at: the daemon died while scoring
    it at every earlier one; one death may be unrelated (kill, power, watchdog), two make it a poison frame."""
    t0 = time.perf_counter()
    try:
        if frame.error is not None:
            raise FrameError(f"{frame.ref}: {frame.error}")
        if attempts >= POISON_AFTER + 1:
            raise FrameError(f"{frame.ref}: the daemon stopped while scoring this frame at {attempts - 1} "
                             "earlier start(s) (decoder crash or hang); not scored again")
        if frame.rgb is not None:
            rgb = frame.rgb
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                raise FrameError(f"camera frame must be uint8 HxWx3, got {rgb.dtype} {rgb.shape}")
            size = (int(rgb.shape[1]), int(rgb.shape[0]))
        else:
            rgb, size = decode_frame(frame.data or b"", frame.ref, max_pixels, model.bundle.size_px)
        t1 = time.perf_counter()
        x = to_input(rgb, model.bundle.size_px)
        t2 = time.perf_counter()
        pred = model.bundle.affine.apply(model.backend.infer(x))
        t3 = time.perf_counter()
        j = judge(pred, threshold)
        amap = pred.anomaly_map.reshape(pred.anomaly_map.shape[-2:])
        lat = {"decode_ms": (t1 - t0) * 1e3, "preprocess_ms": (t2 - t1) * 1e3, "inference_ms": (t3 - t2) * 1e3,
               "total_ms": (time.perf_counter() - t0) * 1e3}
        return Scored(j.outcome, threshold, round(j.score, 6), round(j.area_fraction, 6),
                      _to_frame_pixels(j.bbox, amap.shape, size) if j.bbox else None, None,
                      lat, rgb, amap)
    except (FrameError, EdgeError) as err:
        error = str(err)
    except (RuntimeError, ValueError, MemoryError) as err:  # a runtime failing on one frame must not stop the line
        error = f"scoring failed: {type(err).__name__}: {err}"
    return Scored("error", threshold, error=error, latency_ms={"total_ms": (time.perf_counter() - t0) * 1e3})
