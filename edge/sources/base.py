"""The Source seam: `poll()` returns the frames that arrived since the last call, without blocking long."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["Frame", "Source"]


@dataclass
class Frame:
    """One frame: encoded bytes (files, MQTT) or a decoded RGB array (cameras), with its provenance."""

    station: str
    ref: str
    data: bytes | None = None
    rgb: np.ndarray | None = None
    t_capture: float = field(default_factory=time.time)
    t_arrival_ns: int = field(default_factory=time.monotonic_ns)
    correlation_id: str | None = None
    reply_topic: str | None = None
    done: Callable[[bool], None] | None = None  # called with ok=True/False once the verdict is queued


class Source(ABC):
    station: str

    @abstractmethod
    def poll(self) -> list[Frame]:
        """Frames that arrived since the last call (possibly none)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the source."""
