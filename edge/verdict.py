"""The verdict: one typed record per frame. Every publisher serialises this model (JSON as is, Sparkplug B as
metrics); `docs/verdict.schema.json` is generated from it (`edge-daemon --verdict-schema`) for plant integrators.

Units are in the field names. Times are ISO-8601 UTC strings plus integer milliseconds: `*_unix_ms` for wall
clock and `scored_monotonic_ms` for intervals on the box (wall clocks jump on boards without an RTC).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Verdict", "Latency", "SCHEMA_VERSION", "iso_utc", "verdict_schema", "schema_text"]

SCHEMA_VERSION = 2  # 1: untyped dicts with epoch floats (before the typed model)


def iso_utc(t: float) -> str:
    """Epoch seconds -> ISO-8601 UTC with milliseconds, e.g. 2026-12-01T10:24:21.123Z."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Latency(BaseModel):
    """Where the time went, in milliseconds; stages that did not run (error verdicts) are null."""

    model_config = ConfigDict(extra="forbid")
    decode_ms: float | None = None
    preprocess_ms: float | None = None
    inference_ms: float | None = None
    total_ms: float = Field(description="frame taken from its source -> verdict ready to spool")


class Verdict(BaseModel):
    """One frame's verdict, as published on <prefix>/<line>/<station>/verdict."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    id: str = Field(description="UUID derived from station, frame identity and content: the same frame always "
                    "gets the same id, so a verdict received twice (QoS 1, restart) can be de-duplicated")
    seq: int = Field(ge=1, description="per-station sequence number, persisted: a gap means a missing verdict")
    station: str
    line: str
    frame: str = Field(description="where the frame is now: its final path (after the move to done/ or "
                       "failed/), or the trigger topic for MQTT frames")
    correlation_id: str | None = Field(None, description="the trigger's id or MQTT 5 correlation data")
    outcome: Literal["ok", "ng", "error"] = Field(description="ng: score above threshold; error: not scored")
    score: float | None = Field(None, description="image anomaly score (null on error)")
    threshold: float = Field(description="the threshold this verdict was judged against")
    anomaly_area: float | None = Field(None, ge=0, le=1, description="fraction of the image above threshold")
    bbox: list[int] | None = Field(None, min_length=4, max_length=4, description="[x0, y0, x1, y1] of the "
                                   "region above threshold, in the frame's own pixels (x1, y1 exclusive)")
    heatmap: str | None = Field(None, description="path of the overlay image on the box (ng only)")
    error: str | None = Field(None, description="why the frame was not scored (outcome error)")
    captured_at: str = Field(description="ISO-8601 UTC time the frame was captured or arrived")
    captured_unix_ms: int
    scored_at: str = Field(description="ISO-8601 UTC time the verdict was made")
    scored_unix_ms: int
    scored_monotonic_ms: int = Field(description="box monotonic clock; differences between verdicts are exact")
    model: str
    model_version: str
    bundle: str = Field(description="digest of the bundle that judged the frame")
    software_version: str = Field(description="Lineside version on the box")
    latency: Latency

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Verdict":
        return cls.model_validate_json(data)


def verdict_schema() -> dict[str, Any]:
    """JSON Schema of the verdict payload (what docs/verdict.schema.json holds)."""
    schema = Verdict.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://lineside.invalid/verdict/v{SCHEMA_VERSION}.schema.json"
    return schema


def schema_text() -> str:
    return json.dumps(verdict_schema(), indent=2, sort_keys=True) + "\n"
