"""The Source seam: `poll()` returns the frames that arrived since the last call, without blocking long."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

__all__ = ["Frame", "Source", "Disposition"]

# what became of a frame: verdict spooled (done/failed), or not spooled and to be offered again later (retry)
Disposition = Literal["done", "failed", "retry"]


@dataclass
class Frame:
    """One frame: encoded bytes (files, MQTT) or a decoded RGB array (cameras), with its provenance.

    `identity` names the frame within its source (file name and mtime, trigger id, camera frame number): with the
    station and the content hash it makes the verdict id, so a frame seen again after a crash keeps its id.
    """

    station: str
    ref: str
    identity: str
    data: bytes | None = None
    rgb: np.ndarray | None = None
    t_capture: float = field(default_factory=time.time)
    t_arrival_ns: int = field(default_factory=time.monotonic_ns)
    correlation_id: str | None = None
    reply_topic: str | None = None
    error: str | None = None  # the source already knows this frame cannot be scored (too large, unreadable)
    done: Callable[[Disposition], None] | None = None  # called once the verdict is spooled (or cannot be)
    final_ref: Callable[[Disposition], str] | None = None  # where done(how) will leave the frame (for the verdict)


class Source(ABC):
    station: str

    @abstractmethod
    def poll(self) -> list[Frame]:
        """Frames that arrived since the last call (possibly none)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the source."""
