"""Store-and-forward queue: every verdict is written to SQLite (WAL) before it is sent and deleted only after
the broker's PUBACK. Bounded by count and age; when it must drop, it drops the oldest and counts them."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

__all__ = ["VerdictQueue"]


class VerdictQueue:
    def __init__(self, path: Path, max_items: int, max_age_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self.max_items, self.max_age_s = max_items, max_age_s
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a PUBACK'd verdict may go; a queued one must survive power loss
            self._db.execute("CREATE TABLE IF NOT EXISTS q (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
                             " payload BLOB NOT NULL, created REAL NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS stats (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
            self._db.execute("INSERT OR IGNORE INTO stats VALUES ('dropped', 0)")

    def put(self, topic: str, payload: bytes) -> int:
        """Persist one message; returns its sequence number. Drops the oldest beyond the bounds."""
        now = time.time()
        with self._lock:
            cur = self._db.execute("INSERT INTO q (topic, payload, created) VALUES (?, ?, ?)", (topic, payload, now))
            seq = int(cur.lastrowid or 0)
            dropped = self._db.execute("DELETE FROM q WHERE created < ?", (now - self.max_age_s,)).rowcount
            n = self._db.execute("SELECT COUNT(*) FROM q").fetchone()[0]
            if n > self.max_items:
                dropped += self._db.execute(
                    "DELETE FROM q WHERE seq IN (SELECT seq FROM q ORDER BY seq LIMIT ?)", (n - self.max_items,)
                ).rowcount
            if dropped:
                self._db.execute("UPDATE stats SET v = v + ? WHERE k = 'dropped'", (dropped,))
        return seq

    def pending(self, after: int = 0, limit: int = 100) -> list[tuple[int, str, bytes]]:
        """Oldest messages with seq > after, in order."""
        with self._lock:
            return self._db.execute("SELECT seq, topic, payload FROM q WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (after, limit)).fetchall()

    def ack(self, seq: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM q WHERE seq = ?", (seq,))

    def depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM q").fetchone()[0])

    def dropped(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT v FROM stats WHERE k = 'dropped'").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
