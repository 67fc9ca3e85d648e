"""MQTT trigger source: a message on the trigger topic is an image, or JSON {"id": ..., "path": ...} naming an
image file under `path_root`. A trigger is acknowledged to the broker only after its verdict is spooled; with
the persistent session (edge/publishers/connection.py) the broker redelivers it if the daemon dies first."""

from __future__ import annotations

import json
import os
import queue
import stat
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt

from edge.config import MqttSource as MqttSourceConfig
from edge.connection import MqttConnection
from edge.sources.base import Disposition, Frame, Source

__all__ = ["MqttTriggerSource"]


class MqttTriggerSource(Source):
    def __init__(self, station: str, cfg: MqttSourceConfig, conn: MqttConnection, reply_prefix: str) -> None:
        """reply_prefix: the line's own topics (<prefix>/<line>/); an MQTT 5 ResponseTopic must stay inside it."""
        self.station = station
        self.cfg = cfg
        self._reply_prefix = reply_prefix
        self._q: queue.Queue[tuple[mqtt.MQTTMessage, Callable[[], None]]] = queue.Queue()
        conn.subscribe(cfg.topic, self._on_message)

    def _on_message(self, msg: mqtt.MQTTMessage, ack: Callable[[], None]) -> None:
        # network thread: only hand over; reading files and decoding happen in the frame loop
        self._q.put((msg, ack))

    def _frame(self, msg: mqtt.MQTTMessage, ack: Callable[[], None]) -> Frame:
        props: Any = msg.properties
        corr = reply = None
        if props is not None and getattr(props, "CorrelationData", None):
            corr = bytes(props.CorrelationData).decode(errors="replace")[:256]
        if props is not None and getattr(props, "ResponseTopic", None):
            # a trigger may not steer verdicts outside this line's own topics
            rt = str(props.ResponseTopic)
            reply = rt if rt.startswith(self._reply_prefix) and "#" not in rt and "+" not in rt else None
        payload = bytes(msg.payload)
        data: bytes | None = payload
        error = None
        ref = f"mqtt:{msg.topic}"
        if len(payload) > self.cfg.max_bytes:
            data, error = None, f"trigger payload of {len(payload)} bytes exceeds source.max_bytes {self.cfg.max_bytes}"
        elif payload[:1] == b"{":
            try:
                body = json.loads(payload)
            except (json.JSONDecodeError, UnicodeDecodeError):
                body = None
            if isinstance(body, dict):
                if body.get("id") is not None:
                    corr = str(body["id"])[:256]
                if "path" in body:
                    ref = str(body["path"])[:1024]
                    data, error = self._read(ref)
        identity = f"mqtt:{msg.topic}:{corr or ''}"

        def done(how: Disposition) -> None:
            if how == "retry":
                self._q.put((msg, ack))  # not spooled (disk trouble): offered again
            else:
                ack()  # verdict spooled: the broker may forget the trigger now

        return Frame(self.station, ref, identity=identity, data=data, error=error, correlation_id=corr,
                     reply_topic=reply, done=done)

    def _read(self, ref: str) -> tuple[bytes | None, str | None]:
        root = self.cfg.path_root
        if root is None:
            return None, "path triggers are off: set source.path_root to the folder the images are written to"
        try:
            p = Path(ref).resolve()
        except (OSError, RuntimeError) as err:
            return None, f"trigger path {ref!r} cannot be resolved: {err}"
        if not p.is_relative_to(root.resolve()):
            return None, f"trigger path {ref!r} is outside source.path_root {root}"
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError as err:
            return None, f"{ref}: cannot open: {err.strerror}"
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None, f"{ref}: not a regular file"
            if st.st_size > self.cfg.max_bytes:
                return None, f"{ref}: {st.st_size} bytes exceeds source.max_bytes {self.cfg.max_bytes}"
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read(self.cfg.max_bytes + 1), None
        finally:
            os.close(fd)

    def poll(self) -> list[Frame]:
        out = []
        while True:
            try:
                msg, ack = self._q.get_nowait()
            except queue.Empty:
                return out
            out.append(self._frame(msg, ack))
