"""Fakes beside the daemon's seams, for fast unit tests: FilesSource feeds frames (encoded bytes or RGB arrays),
EchoBackend echoes its input back as the anomaly map, MemoryPublisher keeps every verdict spooled for it, and
fake_model loads nothing. With them the real Daemon scores, spools and publishes without a bundle or a broker.

They live with the tests, not in edge/: they serve unit tests only, so the device install neither ships them nor
lets a config select them. Every seam still has integration tests against the real part (test_daemon.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from edge.backends.base import Backend
from edge.bundle import Bundle
from edge.connection import MqttConnection
from edge.contract import BundleInput, BundleManifest, BundleModelInfo, Golden, Prediction
from edge.errors import SourceError
from edge.publishers.base import Publisher
from edge.queue import Pending, VerdictQueue
from edge.scoring import LoadedModel
from edge.sources.base import Disposition, Frame, Source
from edge.verdict import Verdict

__all__ = ["EchoBackend", "FilesSource", "MemoryPublisher", "fake_model"]


class FilesSource(Source):
    """Delivers the frames it was given, in order, at the next poll; `done` dispositions are kept by ref.

    A frame is bytes (an encoded image, as files and MQTT deliver) or an array (decoded, as cameras deliver).
    `offer` adds more; `fail_with` makes every poll raise SourceError (a camera unplugged).
    """

    def __init__(self, station: str, frames: Sequence[bytes | np.ndarray] = ()) -> None:
        self.station = station
        self._pending: list[Frame] = []
        self._n = 0
        self.dispositions: dict[str, Disposition] = {}
        self.fail_with: str | None = None
        self.offer(*frames)

    def offer(self, *frames: bytes | np.ndarray, identity: str | None = None) -> list[Frame]:
        """Queue frames for the next poll; a given identity marks them as a frame seen before (a re-delivery)."""
        made = []
        for item in frames:
            ref = f"files:{self.station}/{self._n}"
            is_bytes = isinstance(item, bytes)
            made.append(Frame(self.station, ref, identity=identity or ref, data=item if is_bytes else None,
                              rgb=None if is_bytes else item,
                              done=lambda how, ref=ref: self.dispositions.__setitem__(ref, how)))
            self._n += 1
        self._pending += made
        return made

    def poll(self) -> list[Frame]:
        if self.fail_with is not None:
            raise SourceError(f"station {self.station}: {self.fail_with}")
        frames, self._pending = self._pending, []
        return frames


class EchoBackend(Backend):
    """The input echoed back: the map is the channel mean of the 1x3xSxS input (0 black, 1 white) and the score its
    maximum, so a frame's brightness decides its outcome against a threshold."""

    name: ClassVar[str] = "echo"
    extra: ClassVar[str] = ""

    def __init__(self, model_path: Path = Path("echo"), device: str = "cpu", cache_dir: Path | None = None,
                 threads: int = 0) -> None:
        super().__init__(model_path, device, cache_dir, threads)
        self.info.version = "fake"
        self.calls = 0

    def infer(self, image: np.ndarray) -> Prediction:
        self.calls += 1
        amap = image[0].mean(axis=0).astype(np.float32)
        return Prediction(amap, float(amap.max()))


class MemoryPublisher(Publisher):
    """Takes each verdict off the spool as soon as it is woken (no broker, no sender thread) and keeps it, with
    the statuses and station up/down events it was given."""

    def __init__(self, name: str, queue: VerdictQueue, conn: MqttConnection) -> None:
        super().__init__(name, queue, conn)
        self.verdicts: list[Verdict] = []
        self.topics: list[str] = []
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []  # ("down" | "up", station)

    def message(self, row: Pending) -> tuple[str, bytes]:
        return row.topic, row.payload

    def start(self) -> None:
        """Nothing to start: wake() delivers."""

    def stop(self) -> None:
        self._stop.set()

    def wake(self) -> None:
        for row in self.queue.pending(self._last_sent, 100, self.name):
            topic, payload = self.message(row)
            self.topics.append(topic)
            self.verdicts.append(Verdict.from_bytes(payload))
            self.queue.ack(row.seq, self.name)
            self._last_sent = row.seq

    def flush(self, timeout_s: float) -> bool:
        self.wake()
        return self.queue.depth(self.name) == 0

    def set_status(self, status: dict[str, Any]) -> None:
        self.statuses.append(status)

    def station_down(self, station: str, reason: str) -> None:
        self.events.append(("down", station))

    def station_up(self, station: str) -> None:
        self.events.append(("up", station))


def fake_model(root: Path, threshold: float = 0.5, size_px: int = 16) -> LoadedModel:
    """An EchoBackend behind a bundle that was never on disk: a typed manifest with this threshold and size."""
    manifest = BundleManifest(bundle_version=1, model=BundleModelInfo(family="echo", name="echo", version="fake"),
                              input=BundleInput(size_px=size_px), threshold=threshold, precision="fp32",
                              runtime=EchoBackend.name, artifact="echo",
                              golden=Golden(inputs="golden.npz", scores=[1.0], tolerance=1e-3), files={})
    return LoadedModel(Bundle(root, manifest, "fakebundle000000"), EchoBackend(), {"passed": True, "n": 0})
