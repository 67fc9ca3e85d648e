"""Station up/down: every station's source is polled each pass; one whose source fails is marked down (the
others go on), reported by the publishers and retried on the next pass until it delivers again."""

from __future__ import annotations

import logging

from edge.errors import SourceError
from edge.publishers import Publisher
from edge.sources.base import Frame, Source

__all__ = ["StationPoller"]

log = logging.getLogger("lineside")


class StationPoller:
    """Polls the stations' sources and keeps which stations are down, and why."""

    def __init__(self, sources: list[Source], publishers: list[Publisher]) -> None:
        self.sources = sources
        self.publishers = publishers
        self.down: dict[str, str] = {}  # station -> the error that took it down

    def poll(self) -> list[Frame]:
        """New frames of every station; a failing source marks its station down until it delivers again."""
        frames: list[Frame] = []
        for s in self.sources:
            try:
                frames += s.poll()
            except (SourceError, OSError) as err:
                if s.station not in self.down:
                    self.down[s.station] = str(err)
                    log.error("station %s is down: %s; retrying", s.station, err)
                    for p in self.publishers:
                        p.station_down(s.station, str(err))
                continue
            if s.station in self.down:
                del self.down[s.station]
                log.info("station %s is back", s.station)
                for p in self.publishers:
                    p.station_up(s.station)
        return frames

    def problems(self) -> list[str]:
        """One line per station that is down."""
        return [f"station {k} down: {v}" for k, v in self.down.items()]
