"""Watched folder: new image files in arrival order, each scored once, then moved to done/ or failed/.

A file is taken only once its size is stable over two polls, so a camera still writing it is not read.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edge.config import FolderSource as FolderConfig
from edge.errors import SourceError
from edge.sources.base import Frame, Source

__all__ = ["FolderSource"]

class FolderSource(Source):
    def __init__(self, station: str, cfg: FolderConfig) -> None:
        self.station = station
        self.path = cfg.path
        self.done_dir = cfg.done_dir or cfg.path / "done"
        self.failed_dir = cfg.failed_dir or cfg.path / "failed"
        if not self.path.is_dir():
            raise SourceError(f"station {station}: watched folder {self.path} does not exist; create it or fix source.path")
        self.done_dir.mkdir(parents=True, exist_ok=True)
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        self._sizes: dict[Path, int] = {}
        self._taken: set[Path] = set()

    def _finish(self, p: Path, ok: bool) -> None:
        dest = (self.done_dir if ok else self.failed_dir) / p.name
        try:
            shutil.move(str(p), str(dest))
        except OSError:
            pass  # removed by someone else: the verdict is already queued
        self._taken.discard(p)

    def poll(self) -> list[Frame]:
        entries = []
        for p in self.path.iterdir():
            # every regular file is a frame (a wrong format gives an error verdict); dot-files are partial copies
            if p in self._taken or p.name.startswith(".") or not p.is_file():
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime_ns, p.name, p, st.st_size))
        frames = []
        seen = set()
        for mtime, _, p, size in sorted(entries):
            seen.add(p)
            if self._sizes.get(p) != size:
                self._sizes[p] = size  # not stable yet: look again next poll
                continue
            self._sizes.pop(p, None)
            try:
                data = p.read_bytes()
            except OSError:
                continue
            self._taken.add(p)
            frames.append(Frame(self.station, str(p), data=data, t_capture=mtime / 1e9,
                                done=lambda ok, p=p: self._finish(p, ok)))
        for p in list(self._sizes):
            if p not in seen:
                del self._sizes[p]
        return frames
