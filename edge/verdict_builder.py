"""From a scored frame to its typed verdict: stamps the result with where the frame now is, the capture and
scoring times, the model and bundle that judged it and the software version."""

from __future__ import annotations

import time

from edge import __version__
from edge.bundle import Bundle
from edge.scoring import Scored
from edge.sources.base import Frame
from edge.verdict import Latency, Verdict, iso_utc

__all__ = ["build_verdict"]


def build_verdict(frame: Frame, fid: str, r: Scored, bundle: Bundle, line: str,
                  heatmap: str | None) -> Verdict:
    """The typed verdict of a scored frame (seq is filled in when it is spooled)."""
    where = frame.final_ref("failed" if r.outcome == "error" else "done") if frame.final_ref else frame.ref
    now = time.time()
    return Verdict(
        id=fid, seq=1, station=frame.station, line=line, frame=where,
        correlation_id=frame.correlation_id, outcome=r.outcome, score=r.score, threshold=r.threshold,
        anomaly_area=r.anomaly_area, bbox=r.bbox, heatmap=heatmap, error=r.error,
        captured_at=iso_utc(frame.t_capture), captured_unix_ms=int(frame.t_capture * 1000),
        scored_at=iso_utc(now), scored_unix_ms=int(now * 1000),
        scored_monotonic_ms=time.monotonic_ns() // 10**6,
        model=bundle.manifest.model.name, model_version=bundle.manifest.model.version,
        bundle=bundle.digest, software_version=__version__,
        latency=Latency(**{k: round(v, 3) for k, v in r.latency_ms.items()}))
