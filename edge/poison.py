"""Poison frames: a frame the daemon died on (decoder crash, hang) must not crash it at every start. The frame being
scored is noted in state_dir/inflight.json; a frame found there at two starts is given an error verdict instead of
being scored again."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["PoisonGuard"]


class PoisonGuard:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._suspect = self._read()

    def _read(self) -> tuple[str, int] | None:
        try:
            d = json.loads(self.path.read_text())
            return str(d["id"]), int(d["attempts"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def begin(self, fid: str, ref: str) -> int:
        """Note the frame being scored; returns how many starts it has been in flight at (1 = first try)."""
        attempts = self._suspect[1] + 1 if self._suspect and self._suspect[0] == fid else 1
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"id": fid, "ref": ref, "attempts": attempts}))
            os.replace(tmp, self.path)
        except OSError:
            pass  # disk full: the spool write reports it; this note only guards against poison frames
        return attempts

    def end(self) -> None:
        """The frame's verdict is spooled."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        self._suspect = None
