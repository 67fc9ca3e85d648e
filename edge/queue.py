"""Store-and-forward spool: every verdict is written to SQLite before it is sent and deleted only after every
publisher that needs it (its consumers: json, sparkplug, ...) had it accepted by its broker. Each consumer keeps
its own place: a slow or offline publisher never blocks or loses another's verdicts. The same database records which frames already have a verdict (so a frame seen
again after a crash keeps its id and sequence number) and each station's sequence counter.

Why a rollback journal and not WAL: SQLite silently drops every WAL frame after one with a bad checksum, so
one flipped bit lost the whole spool tail without a trace; with a rollback journal a committed verdict lives
in the main file, where a damaged page is found by the integrity check at start. Each row also carries a
SHA-256 of its topic and payload, so a damaged row is quarantined, never forwarded.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from edge.errors import SpoolError

__all__ = ["VerdictQueue", "Pending"]

log = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS q (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
    " payload BLOB NOT NULL, created REAL NOT NULL, crc TEXT NOT NULL DEFAULT '')",
    "CREATE TABLE IF NOT EXISTS quarantine (seq INTEGER, topic BLOB, payload BLOB, reason TEXT, t REAL)",
    "CREATE TABLE IF NOT EXISTS frames (id TEXT PRIMARY KEY, station TEXT NOT NULL, station_seq INTEGER NOT NULL,"
    " t REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS stations (station TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS stats (k TEXT PRIMARY KEY, v INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS deliveries (seq INTEGER NOT NULL, consumer TEXT NOT NULL, PRIMARY KEY (seq, consumer))",
)
_STATS = ("dropped", "refused", "quarantined")
_FRAMES_KEPT = 200_000  # frame ids remembered for de-duplication (days of production at typical rates)


def _crc(topic: str, payload: bytes) -> str:
    return hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()[:32]


@dataclass(frozen=True)
class Pending:
    seq: int
    topic: str
    payload: bytes
    created: float = 0.0  # wall-clock time it was spooled


class VerdictQueue:
    """The on-disk spool. Every method raises SpoolError (never a raw sqlite3 error) when the disk fails."""

    def __init__(self, path: Path, max_items: int, max_age_s: float | None = None,
                 consumers: Sequence[str] = ("json",)) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        if not consumers:
            raise ValueError("a spool needs at least one consumer")
        self.consumers = tuple(dict.fromkeys(consumers))
        self.max_items, self.max_age_s = max_items, max_age_s
        self._lock = threading.Lock()
        self.incident: str | None = None  # what the start-up check found and did, for status and logs
        try:
            self._db = self._open(path)
            self._check()
        except sqlite3.DatabaseError as err:
            self._recover(err)
        self._adopt_orphans()

    # --- opening, integrity, recovery ------------------------------------------------------------
    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=5)
        db.text_factory = bytes  # a damaged TEXT cell must not raise on read: rows are checked by their CRC
        db.execute("PRAGMA journal_mode=TRUNCATE")
        db.execute("PRAGMA synchronous=FULL")  # a queued verdict must survive power loss
        for stmt in _SCHEMA:
            db.execute(stmt)
        cols = {r[1] for r in db.execute("PRAGMA table_info(q)")}
        if b"crc" not in cols and "crc" not in cols:  # spool from an older version
            db.execute("ALTER TABLE q ADD COLUMN crc TEXT NOT NULL DEFAULT ''")
        for k in _STATS:
            db.execute("INSERT OR IGNORE INTO stats VALUES (?, 0)", (k,))
        return db

    def _adopt_orphans(self) -> None:
        """Rows that no consumer is listed for (a spool from before consumers, or recovered) go to every consumer."""
        def tx() -> None:
            orphans = [r[0] for r in self._db.execute(
                "SELECT seq FROM q WHERE seq NOT IN (SELECT seq FROM deliveries)")]
            self._db.executemany("INSERT OR IGNORE INTO deliveries VALUES (?, ?)",
                                 [(seq, c) for seq in orphans for c in self.consumers])
        try:
            self._run(tx)
        except SpoolError as err:
            log.error("%s", err)

    def _check(self) -> None:
        rows = self._db.execute("PRAGMA quick_check").fetchall()
        if [r[0] for r in rows] != [b"ok"]:
            raise sqlite3.DatabaseError(f"integrity check: {rows[0][0]!r}")

    def _recover(self, err: sqlite3.DatabaseError) -> None:
        """Move a damaged spool aside, start a new one and carry over every row that still reads back intact."""
        try:
            self._db.close()
        except (AttributeError, sqlite3.Error):
            pass
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-journal", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(Path(str(aside) + suffix))
        rows: list[tuple] = []
        frames: list[tuple] = []
        counters: list[tuple] = []
        unreadable = 0
        try:
            old = sqlite3.connect(f"file:{aside}?mode=ro", uri=True)
            old.text_factory = bytes
            for table, sink, cols in (("q", rows, "seq, topic, payload, created, crc"),
                                      ("frames", frames, "id, station, station_seq, t"),
                                      ("stations", counters, "station, seq")):
                try:
                    for r in old.execute(f"SELECT {cols} FROM {table}"):  # noqa: S608 - fixed names
                        sink.append(r)
                except sqlite3.DatabaseError:
                    unreadable += 1
            old.close()
        except sqlite3.DatabaseError:
            unreadable += 1
        self._db = self._open(self.path)
        good = 0
        bad = 0
        with self._lock:
            for seq, topic, payload, created, crc in rows:
                try:
                    t = topic.decode() if isinstance(topic, bytes) else str(topic)
                    c = crc.decode() if isinstance(crc, bytes) else str(crc)
                except UnicodeDecodeError:
                    bad += 1
                    continue
                if c and c == _crc(t, bytes(payload)):
                    self._db.execute("INSERT INTO q (seq, topic, payload, created, crc) VALUES (?, ?, ?, ?, ?)",
                                     (seq, t, bytes(payload), created, c))
                    good += 1
                else:
                    self._db.execute("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?)",
                                     (seq, topic, payload, "checksum mismatch during recovery", time.time()))
                    bad += 1
            for fid, station, sseq, t in frames:
                self._db.execute("INSERT OR IGNORE INTO frames VALUES (?, ?, ?, ?)", (_s(fid), _s(station), sseq, t))
            for station, sseq in counters:
                self._db.execute("INSERT OR REPLACE INTO stations VALUES (?, ?)", (_s(station), sseq))
            # a counter lost with the damage restarts above every sequence number still known
            self._db.execute("INSERT OR REPLACE INTO stations SELECT station, MAX(station_seq) FROM frames "
                             "WHERE station NOT IN (SELECT station FROM stations) GROUP BY station")
            if bad:
                self._db.execute("UPDATE stats SET v = v + ? WHERE k = 'quarantined'", (bad,))
        self.incident = (f"spool {self.path.name} was damaged ({err}); moved aside to {aside.name}; "
                         f"{good} queued verdicts recovered, {bad} quarantined"
                         + (f", {unreadable} table(s) unreadable" if unreadable else ""))
        log.error("%s", self.incident)

    # --- writing ----------------------------------------------------------------------------------
    def _run(self, fn: Callable[[], object]) -> object:
        with self._lock:
            try:
                return fn()
            except sqlite3.OperationalError as err:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise SpoolError(f"spool {self.path}: {err} (free disk space under the state directory)") from err
            except sqlite3.DatabaseError as err:
                raise SpoolError(f"spool {self.path}: {err}; restart the daemon to check and recover it") from err

    def seen(self, frame_id: str) -> int | None:
        """The station sequence number of a frame that already has a verdict, or None."""
        def q() -> int | None:
            r = self._db.execute("SELECT station_seq FROM frames WHERE id = ?", (frame_id,)).fetchone()
            return None if r is None else int(r[0])
        return self._run(q)  # type: ignore[return-value]

    def record(self, frame_id: str, station: str, topic: str, build: Callable[[int], bytes]) -> int | None:
        """Give the frame the station's next sequence number and spool build(seq) atomically.

        Returns the sequence number, or None if this frame already has a verdict (nothing is written).
        """
        def tx() -> int | None:
            now = time.time()
            self._db.execute("BEGIN IMMEDIATE")
            if self._db.execute("SELECT 1 FROM frames WHERE id = ?", (frame_id,)).fetchone():
                self._db.execute("ROLLBACK")
                return None
            r = self._db.execute("SELECT seq FROM stations WHERE station = ?", (station,)).fetchone()
            seq = 1 if r is None else int(r[0]) + 1
            payload = build(seq)
            self._db.execute("INSERT OR REPLACE INTO stations VALUES (?, ?)", (station, seq))
            self._db.execute("INSERT INTO frames VALUES (?, ?, ?, ?)", (frame_id, station, seq, now))
            self._insert(topic, payload, now)
            dropped = self._bound(now)
            self._db.execute("COMMIT")
            if dropped:
                log.error("spool full: dropped the %d oldest undelivered verdict(s) (queue.max_items=%d)",
                          dropped, self.max_items)
            return seq
        return self._run(tx)  # type: ignore[return-value]

    def put(self, topic: str, payload: bytes) -> int:
        """Spool a message that is not a frame's verdict (tests, tools); returns its spool seq."""
        def tx() -> int:
            now = time.time()
            self._db.execute("BEGIN IMMEDIATE")
            seq = self._insert(topic, payload, now)
            self._bound(now)
            self._db.execute("COMMIT")
            return seq
        return self._run(tx)  # type: ignore[return-value]

    def _insert(self, topic: str, payload: bytes, now: float) -> int:
        cur = self._db.execute("INSERT INTO q (topic, payload, created, crc) VALUES (?, ?, ?, ?)",
                               (topic, payload, now, _crc(topic, payload)))
        seq = int(cur.lastrowid or 0)
        self._db.executemany("INSERT INTO deliveries VALUES (?, ?)", [(seq, c) for c in self.consumers])
        return seq

    def _bound(self, now: float) -> int:
        dropped = 0
        if self.max_age_s is not None:
            dropped += self._db.execute("DELETE FROM q WHERE created < ?", (now - self.max_age_s,)).rowcount
        n = self._db.execute("SELECT COUNT(*) FROM q").fetchone()[0]
        if n > self.max_items:
            dropped += self._db.execute(
                "DELETE FROM q WHERE seq IN (SELECT seq FROM q ORDER BY seq LIMIT ?)", (n - self.max_items,)
            ).rowcount
        if dropped:
            self._db.execute("UPDATE stats SET v = v + ? WHERE k = 'dropped'", (dropped,))
            self._db.execute("DELETE FROM deliveries WHERE seq NOT IN (SELECT seq FROM q)")
        nf = self._db.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
        if nf > _FRAMES_KEPT * 1.1:
            self._db.execute("DELETE FROM frames WHERE rowid IN (SELECT rowid FROM frames ORDER BY t LIMIT ?)",
                             (nf - _FRAMES_KEPT,))
        return dropped

    # --- reading and acknowledging ------------------------------------------------------------------
    def pending(self, after: int = 0, limit: int = 100, consumer: str | None = None) -> list[Pending]:
        """A consumer's oldest intact messages with seq > after, in order; damaged rows are moved to quarantine."""
        who = consumer or self.consumers[0]

        def q() -> list[Pending]:
            out: list[Pending] = []
            rows = self._db.execute(
                "SELECT q.seq, topic, payload, crc, created FROM q JOIN deliveries d ON d.seq = q.seq "
                "AND d.consumer = ? WHERE q.seq > ? ORDER BY q.seq LIMIT ?", (who, after, limit)).fetchall()
            for seq, topic, payload, crc, created in rows:
                try:
                    t = topic.decode()
                    ok = crc.decode() == _crc(t, bytes(payload))
                except (UnicodeDecodeError, AttributeError):
                    t, ok = "", False
                if ok:
                    out.append(Pending(int(seq), t, bytes(payload), float(created)))
                    continue
                self._db.execute("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?)",
                                 (seq, topic, payload, "checksum mismatch", time.time()))
                self._db.execute("DELETE FROM q WHERE seq = ?", (seq,))
                self._db.execute("DELETE FROM deliveries WHERE seq = ?", (seq,))
                self._db.execute("UPDATE stats SET v = v + 1 WHERE k = 'quarantined'")
                log.error("spool row %d is damaged (checksum mismatch): quarantined, not forwarded", seq)
            return out
        return self._run(q)  # type: ignore[return-value]

    def ack(self, seq: int, consumer: str | None = None) -> None:
        """The consumer's broker accepted row seq; the row goes once no consumer needs it any more."""
        who = consumer or self.consumers[0]

        def tx() -> None:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM deliveries WHERE seq = ? AND consumer = ?", (seq, who))
            self._db.execute("DELETE FROM q WHERE seq = ? AND NOT EXISTS (SELECT 1 FROM deliveries WHERE seq = ?)",
                             (seq, seq))
            self._db.execute("COMMIT")
        self._run(tx)

    def count_refused(self) -> None:
        self._run(lambda: self._db.execute("UPDATE stats SET v = v + 1 WHERE k = 'refused'"))

    def depth(self, consumer: str | None = None) -> int:
        """Verdicts not yet accepted by every consumer (or by the one named)."""
        if consumer is None:
            return int(self._run(lambda: self._db.execute("SELECT COUNT(*) FROM q").fetchone()[0]))  # type: ignore[arg-type]
        return int(self._run(lambda: self._db.execute(  # type: ignore[arg-type]
            "SELECT COUNT(*) FROM deliveries WHERE consumer = ?", (consumer,)).fetchone()[0]))

    def stat(self, key: str) -> int:
        """A counter: dropped (bounds), refused (broker said no), quarantined (damaged rows)."""
        return int(self._run(lambda: self._db.execute("SELECT v FROM stats WHERE k = ?", (key,)).fetchone()[0]))  # type: ignore[arg-type]

    def dropped(self) -> int:
        return self.stat("dropped")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _s(v: object) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)
