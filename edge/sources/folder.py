"""Watched folder: new image files in arrival order, each scored once, then moved to done/ or failed/.

A file is taken once its size and mtime have not changed for `settle_s` and, for PNG and JPEG, once its end
marker is there (a camera writing in bursts). Dot-files are ignored, so write-then-rename is safe too. A file
that cannot be moved away is remembered and not scored again.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from edge.config import FolderSource as FolderConfig
from edge.errors import SourceError
from edge.sources.base import Disposition, Frame, Source

__all__ = ["FolderSource"]

log = logging.getLogger(__name__)


def _ended(data: bytes) -> bool | None:
    """Whether a PNG or JPEG ends with its end marker (IEND chunk / EOI), i.e. its writer has finished; None for
    formats without one (TIFF, BMP), which are judged by a stable size instead."""
    body = data.rstrip(b"\0")  # some cameras pad to a block size
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return body[-8:-4] == b"IEND"
    if data[:2] == b"\xff\xd8":
        return body[-2:] == b"\xff\xd9"
    return None


class FolderSource(Source):
    def __init__(self, station: str, cfg: FolderConfig) -> None:
        self.station = station
        self.cfg = cfg
        self.path = cfg.path
        self.done_dir = cfg.done_dir or cfg.path / "done"
        self.failed_dir = cfg.failed_dir or cfg.path / "failed"
        if not self.path.is_dir():
            raise SourceError(f"station {station}: watched folder {self.path} does not exist; create it or fix source.path")
        try:
            self.done_dir.mkdir(parents=True, exist_ok=True)
            self.failed_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SourceError(f"station {station}: cannot create {err.filename}: {err.strerror}; "
                              "create done/ and failed/ writable by the daemon") from err
        # path -> (size, mtime_ns, first seen with this size and mtime, ends with its end marker?)
        self._seen: dict[Path, tuple[int, int, float, bool | None]] = {}
        self._taken: set[Path] = set()
        self._stuck: dict[Path, tuple[int, int]] = {}  # could not be moved: skipped until it changes

    def _finish(self, p: Path, how: Disposition, stat: tuple[int, int]) -> None:
        self._taken.discard(p)
        if how == "retry":
            return  # left in place: offered again at the next poll
        dest = self._dest(p, how)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)  # gone with the share it lives on, then back
            shutil.move(str(p), str(dest))
        except FileNotFoundError:
            pass  # removed by someone else: the verdict is already spooled
        except OSError as err:
            self._stuck[p] = stat
            log.error("station %s: cannot move %s to %s (%s); its verdict is spooled and it will not be scored "
                      "again; check the folder's permissions", self.station, p.name, dest.parent, err.strerror)

    def _dest(self, p: Path, how: Disposition) -> Path:
        return (self.done_dir if how == "done" else self.failed_dir) / p.name

    def poll(self) -> list[Frame]:
        entries = []
        try:
            listing = list(self.path.iterdir())
        except OSError as err:
            raise SourceError(f"station {self.station}: cannot list {self.path}: {err.strerror}") from err
        for p in listing:
            # every regular file is a frame (a wrong format gives an error verdict); dot-files are partial copies
            if p in self._taken or p.name.startswith(".") or not p.is_file():
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            key = (st.st_size, st.st_mtime_ns)
            if self._stuck.get(p) == key:
                continue
            self._stuck.pop(p, None)
            entries.append((st.st_mtime_ns, p.name, p, key))
        now = time.monotonic()
        frames = []
        present = set()
        for mtime, _, p, key in sorted(entries):
            present.add(p)
            prev = self._seen.get(p)
            if prev is None or prev[:2] != key:
                prev = self._seen[p] = (*key, now, None)  # new, or changed since the last look
            elif prev[3] is False and now - prev[2] < self.cfg.incomplete_wait_s:
                continue  # unchanged and still without its end marker: no need to read it again yet
            waited = now - prev[2]
            try:
                data = p.read_bytes()
            except OSError:
                continue
            if len(data) != key[0]:
                continue  # it grew while we read it
            ended = _ended(data)
            self._seen[p] = (*prev[:3], ended)
            if ended is None and waited < self.cfg.settle_s:
                continue  # no end marker to go by: taken once its size and mtime have been stable settle_s
            if ended is False and waited < self.cfg.incomplete_wait_s:
                continue  # a camera still writing: its end marker is not there yet
            del self._seen[p]
            self._taken.add(p)
            frames.append(Frame(self.station, str(p), identity=f"file:{p.name}:{mtime}", data=data,
                                t_capture=mtime / 1e9, done=lambda how, p=p, key=key: self._finish(p, how, key),
                                final_ref=lambda how, p=p: str(self._dest(p, how))))
        for p in list(self._seen):
            if p not in present:
                del self._seen[p]
        return frames
