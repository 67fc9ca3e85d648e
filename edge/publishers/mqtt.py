"""MQTT publisher (paho-mqtt 2.x, callback API v2): QoS 1 verdicts from the on-disk queue, retained status with
a last will, TLS and credentials, reconnect with backoff, subscriptions restored in the connect callback.

Order and delivery: a sender thread publishes queued verdicts oldest first while connected and deletes each
only when its PUBACK arrives. After a reconnect everything not yet acknowledged is sent again, oldest
first, so a verdict can arrive twice (QoS 1) but never goes missing; subscribers de-duplicate by id.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt

from edge.config import MqttConfig
from edge.queue import VerdictQueue

__all__ = ["MqttPublisher", "topic_for"]

log = logging.getLogger(__name__)


def topic_for(cfg: MqttConfig, station: str | None, leaf: str) -> str:
    """<prefix>/<line>/<station>/<leaf>, or <prefix>/<line>/<leaf> for the daemon itself."""
    parts = [cfg.prefix, cfg.line] + ([station] if station else []) + [leaf]
    return "/".join(parts)


class MqttPublisher:
    """Publishes queued verdicts and the retained status; dispatches subscribed topics to handlers."""

    def __init__(self, cfg: MqttConfig, queue: VerdictQueue, window: int = 20) -> None:
        self.cfg = cfg
        self.queue = queue
        self.window = window
        self.status_topic = topic_for(cfg, None, "status")
        self._handlers: dict[str, Callable[[str, bytes, Any], None]] = {}
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # mid -> queue seq
        self._early: dict[int, float] = {}  # PUBACKs that beat the recording of their mid (mid -> time)
        self._last_sent = 0
        self._generation = 0  # bumped on every connect; a send loop from an older connection stops
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._status: dict[str, Any] = {"state": "starting"}
        proto = mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id or f"lineside-{cfg.line}",
                                  protocol=proto)
        self.client.max_inflight_messages_set(window)
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password())
        if cfg.tls:
            self.client.tls_set(ca_certs=str(cfg.tls.ca), certfile=str(cfg.tls.cert) if cfg.tls.cert else None,
                                keyfile=str(cfg.tls.key) if cfg.tls.key else None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.will_set(self.status_topic, json.dumps({"state": "offline"}), qos=1, retain=True)
        self.client.reconnect_delay_set(max(1, int(cfg.reconnect_min_s)), max(1, int(cfg.reconnect_max_s)))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.connect_failures = 0
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
        self.client.loop_start()
        self._sender.start()

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def subscribe(self, topic: str, handler: Callable[[str, bytes, Any], None]) -> None:
        """Register a handler; (re)subscribed on every connect."""
        self._handlers[topic] = handler
        if self.is_connected:
            self.client.subscribe(topic, qos=1)

    def set_status(self, status: dict[str, Any]) -> None:
        """Publish the retained status (not queued: only the latest matters)."""
        self._status = status
        if self.is_connected:
            self.client.publish(self.status_topic, json.dumps(status), qos=1, retain=True)

    def publish(self, topic: str, payload: dict[str, Any]) -> int:
        """Persist a verdict in the queue (durable before this returns) and wake the sender."""
        seq = self.queue.put(topic, json.dumps(payload, separators=(",", ":")).encode())
        self._wake.set()
        return seq

    def flush(self, timeout_s: float) -> bool:
        """Wait until the queue is empty (all verdicts acknowledged) or the timeout passes."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.queue.depth() == 0:
                return True
            self._wake.set()
            time.sleep(0.02)
        return self.queue.depth() == 0

    def close(self, final_status: dict[str, Any] | None = None) -> None:
        self._stop.set()
        self._wake.set()
        if final_status is not None and self.is_connected:
            info = self.client.publish(self.status_topic, json.dumps(final_status), qos=1, retain=True)
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()  # clean DISCONNECT: the broker does not send the will
        # bounded: a network thread stuck in a reconnect must not hold up a stop that systemd is timing
        stopper = threading.Thread(target=self.client.loop_stop, daemon=True)
        stopper.start()
        stopper.join(5)
        self._sender.join(timeout=2)

    # --- paho callbacks (network thread) -------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.connect_failures += 1
            log.warning("mqtt: connection refused by %s:%s: %s", self.cfg.host, self.cfg.port, reason)
            return
        log.info("mqtt: connected to %s:%s", self.cfg.host, self.cfg.port)
        with self._lock:
            self._inflight.clear()
            self._early.clear()
            self._generation += 1
            self._last_sent = 0  # resend everything not yet acknowledged, oldest first
        for topic in self._handlers:
            client.subscribe(topic, qos=1)
        client.publish(self.status_topic, json.dumps(self._status), qos=1, retain=True)
        self._connected.set()
        self._wake.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()
        log.warning("mqtt: disconnected (%s); verdicts stay queued on disk", reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        # runs on paho's network thread while paho holds its own locks: never call into paho from here
        with self._lock:
            seq = self._inflight.pop(mid, None)
            if seq is None:
                now = time.monotonic()
                self._early = {m: t for m, t in self._early.items() if now - t < 5.0}  # status PUBACKs age out
                self._early[mid] = now
        if seq is not None:
            self.queue.ack(seq)
            self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        for pattern, handler in self._handlers.items():
            if mqtt.topic_matches_sub(pattern, msg.topic):
                handler(msg.topic, msg.payload, msg.properties)

    # --- sender thread ---------------------------------------------------------------------------
    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            if not self.is_connected:
                continue
            with self._lock:
                room = self.window - len(self._inflight)
                after = self._last_sent
                generation = self._generation
            if room <= 0:
                continue
            for seq, topic, payload in self.queue.pending(after, room):
                # publish outside our lock: paho calls _on_publish holding its own lock (lock-order inversion)
                info = self.client.publish(topic, payload, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    break  # not connected any more: the next connect resends from the oldest
                with self._lock:
                    if generation != self._generation:
                        break  # reconnected meanwhile: the new connection resends from the oldest
                    acked = self._early.pop(info.mid, None) is not None
                    if not acked:
                        self._inflight[info.mid] = seq
                    self._last_sent = seq
                if acked:
                    self.queue.ack(seq)
