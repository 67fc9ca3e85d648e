"""The Publisher seam: each publisher is a consumer of the on-disk spool with its own place in it.

A publisher turns a spooled verdict into its protocol's message (`message()`); the sending is shared: a sender
thread publishes the publisher's pending rows oldest first while its connection is up and it is `ready()`, and
acknowledges a row in the spool only when its broker accepted it. A refused message (MQTT 5 reason code: ACL,
quota) is kept, counted and retried after a back-off; after a reconnect everything not yet accepted is sent again,
oldest first (same verdict id, so a receiver can de-duplicate). One slow or offline publisher never blocks
another: each sends from its own place in the spool.

Adding a protocol = one subclass registered with `@register("name")` plus its config model in edge/config.py.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

from edge.errors import SpoolError
from edge.connection import MqttConnection
from edge.queue import Pending, VerdictQueue

__all__ = ["Publisher", "register", "REGISTRY"]

log = logging.getLogger(__name__)

REGISTRY: dict[str, type["Publisher"]] = {}
_REFUSED_RETRY_S = 5.0
_PUBACK_STALL_S = 30.0


def register(kind: str) -> Callable[[type["Publisher"]], type["Publisher"]]:
    """Class decorator: make a publisher available as `publishers: [{type: kind, ...}]` in the config."""
    def deco(cls: type["Publisher"]) -> type["Publisher"]:
        REGISTRY[kind] = cls
        return cls
    return deco


class Publisher(ABC):
    """A spool consumer that publishes over one MQTT connection."""

    qos: ClassVar[int] = 1

    def __init__(self, name: str, queue: VerdictQueue, conn: MqttConnection, window: int = 20) -> None:
        self.name = name  # the consumer name in the spool
        self.queue = queue
        self.conn = conn
        self.window = window
        self._lock = threading.Lock()
        self._inflight: set[int] = set()  # spool seqs awaiting their broker's answer
        self._last_sent = 0
        self._generation = -1
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._refused: dict[int, str] = {}
        self._retry_at = 0.0
        self._refused_problem: str | None = None
        self._spool_problem: str | None = None
        self.sender_beat = time.monotonic()
        self._sender = threading.Thread(target=self._send_loop, name=f"{name}-sender", daemon=True)
        conn.on_connect(self._connected)

    # --- what a protocol supplies ----------------------------------------------------------------
    @abstractmethod
    def message(self, row: Pending) -> tuple[str, bytes] | None:
        """Topic and payload for one spooled verdict (None: nothing to send for it, acknowledge it)."""

    def ready(self) -> bool:
        """May verdicts be sent now (beyond being connected)?"""
        return True

    def on_connected(self) -> None:  # noqa: B027 - optional hook
        """Network thread, after each connect: births, subscriptions."""

    def set_status(self, status: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Mirror the daemon's status in this protocol (the JSON status topic is the daemon's own)."""

    def station_down(self, station: str, reason: str) -> None:  # noqa: B027 - optional hook
        """A station's source failed (the daemon retries it)."""

    def station_up(self, station: str) -> None:  # noqa: B027 - optional hook
        """A failed station's source works again."""

    def closing_messages(self) -> list[tuple[str, bytes | str, bool]]:
        """Messages to publish just before a clean disconnect (topic, payload, retain)."""
        return []

    # --- lifecycle and health -------------------------------------------------------------------------
    def start(self) -> None:
        self._sender.start()

    def _connected(self) -> None:
        with self._lock:
            self._inflight.clear()
            self._last_sent = 0  # resend everything not yet accepted, oldest first
            self._generation = self.conn.generation
        self.on_connected()
        self._wake.set()

    @property
    def problem(self) -> str | None:
        """Why delivery is failing (status 'degraded'), None when healthy."""
        return "; ".join(p for p in (self._refused_problem, self._spool_problem) if p) or None

    def alive(self) -> str | None:
        if self._stop.is_set() or self._sender.ident is None:  # stopped, or not started yet
            return None
        if not self._sender.is_alive():
            return f"{self.name} sender thread died"
        if time.monotonic() - self.sender_beat > 30:
            return f"{self.name} sender thread stalled for 30 s"
        return None

    def sender_state(self) -> dict[str, Any]:
        with self._lock:
            return {"inflight": len(self._inflight), "last_sent": self._last_sent,
                    "retry_in_s": round(max(0.0, self._retry_at - time.monotonic()), 1),
                    "refused": sorted(self._refused)[:10]}

    def wake(self) -> None:
        """A verdict was spooled: send it."""
        self._wake.set()

    def flush(self, timeout_s: float) -> bool:
        """Wait until this publisher has nothing left in the spool, or the timeout passes."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.queue.depth(self.name) == 0:
                return True
            self._wake.set()
            time.sleep(0.02)
        return self.queue.depth(self.name) == 0

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._sender.join(timeout=2)

    # --- acknowledgements (network thread) --------------------------------------------------------
    def _settle(self, seq: int, reason: Any) -> None:
        """The broker answered for spool row seq: acknowledge it if accepted; keep and report it if refused."""
        with self._lock:
            self._inflight.discard(seq)
        if reason is not None and getattr(reason, "is_failure", False):
            why = f"broker refused verdict row {seq} ({self.name}): {reason}"
            with self._lock:
                first = seq not in self._refused
                self._refused[seq] = why
            self._rewind(seq)
            self._refused_problem = why + " (kept on disk; check the broker's ACL for the topic)"
            if first:
                try:
                    self.queue.count_refused()
                except SpoolError as err:
                    log.error("%s", err)
                log.error("%s: %s; kept in the spool and retried every %.0f s", self.name, why, _REFUSED_RETRY_S)
            return
        try:
            self.queue.ack(seq, self.name)
        except SpoolError as err:  # accepted but not acknowledged (disk full): send it again later, same id
            self._rewind(seq)
            if self._spool_problem != str(err):
                log.error("%s", err)
            self._spool_problem = str(err)
            return
        with self._lock:
            self._refused.pop(seq, None)
            if not self._refused:
                self._refused_problem = None
        self._wake.set()

    def _rewind(self, seq: int) -> None:
        with self._lock:
            self._retry_at = time.monotonic() + _REFUSED_RETRY_S
            self._last_sent = min(self._last_sent, seq - 1)

    # --- sender thread ----------------------------------------------------------------------------
    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self.sender_beat = time.monotonic()
            self._wake.wait(0.2)
            self._wake.clear()
            if not self.conn.is_connected or time.monotonic() < self._retry_at or not self.ready():
                continue
            try:
                self._send_some()
                self._spool_problem = None
            except SpoolError as err:  # disk trouble: report it and keep trying, never die
                if self._spool_problem != str(err):
                    log.error("%s", err)
                self._spool_problem = str(err)
                time.sleep(1.0)

    def _send_some(self) -> None:
        with self._lock:
            if self._inflight and time.monotonic() - self.conn.last_ack > _PUBACK_STALL_S:
                # answers stopped coming on a live connection: send everything not accepted again (same ids)
                log.warning("%s: no PUBACK for %.0f s with %d in flight; sending them again", self.name,
                            _PUBACK_STALL_S, len(self._inflight))
                self._inflight.clear()
                self._last_sent = 0
                self.conn.last_ack = time.monotonic()
            room = self.window - len(self._inflight)
            after = self._last_sent
            generation = self._generation
        if room <= 0:
            return
        for row in self.queue.pending(after, room, self.name):
            msg = self.message(row)
            if msg is None:
                self.queue.ack(row.seq, self.name)
                with self._lock:
                    self._last_sent = max(self._last_sent, row.seq)
                continue
            with self._lock:
                if generation != self.conn.generation or time.monotonic() < self._retry_at:
                    break  # reconnected or refused meanwhile: sending resumes from the oldest not accepted
                self._inflight.add(row.seq)
                self._last_sent = max(self._last_sent, row.seq)
            # publish outside our lock: paho calls back holding its own lock (lock-order inversion)
            if not self.conn.publish(msg[0], msg[1], qos=self.qos, on_ack=lambda r, s=row.seq: self._settle(s, r)):
                with self._lock:
                    self._inflight.discard(row.seq)
                    self._last_sent = min(self._last_sent, row.seq - 1)
                break  # not connected any more: the next connect resends from the oldest
