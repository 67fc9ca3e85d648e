"""MQTT publisher (paho-mqtt 2.x, callback API v2): QoS 1 verdicts from the on-disk spool, retained status with
a last will, TLS and credentials, reconnect with backoff, subscriptions restored in the connect callback.

Order and delivery: a sender thread publishes spooled verdicts oldest first while connected and deletes each
only when a PUBACK *accepts* it. A PUBACK with a failure reason code (MQTT 5: ACL, quota) keeps the verdict,
counts it and marks the publisher unhealthy; it is sent again after a back-off. After a reconnect everything
not yet accepted is sent again, oldest first, so a verdict can arrive twice (QoS 1, same id) but never goes
missing. Received messages are acknowledged by hand: a trigger is acknowledged only once its verdict is spooled,
so the broker redelivers it (persistent session) if the daemon dies first.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.config import MqttConfig
from edge.errors import SpoolError
from edge.queue import VerdictQueue

__all__ = ["MqttPublisher", "topic_for", "default_client_id", "Handler"]

log = logging.getLogger(__name__)

# handler(message, ack): call ack() once the message is safely handled (for triggers: once the verdict is spooled)
Handler = Callable[[mqtt.MQTTMessage, Callable[[], None]], None]
_SESSION_EXPIRY_S = 24 * 3600  # triggers queued by the broker for a daemon that is down survive a day
_REFUSED_RETRY_S = 5.0
_PUBACK_STALL_S = 30.0


def topic_for(cfg: MqttConfig, station: str | None, leaf: str) -> str:
    """<prefix>/<line>/<station>/<leaf>, or <prefix>/<line>/<leaf> for the daemon itself."""
    parts = [cfg.prefix, cfg.line] + ([station] if station else []) + [leaf]
    return "/".join(parts)


def default_client_id(cfg: MqttConfig) -> str:
    """Unique per box and stable across restarts (a persistent session needs a fixed id): line + host name."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:40]
    return f"lineside-{cfg.line}-{host}"


class MqttPublisher:
    """Publishes spooled verdicts and the retained status; dispatches subscribed topics to handlers."""

    def __init__(self, cfg: MqttConfig, queue: VerdictQueue, window: int = 20) -> None:
        self.cfg = cfg
        self.queue = queue
        self.window = window
        self.status_topic = topic_for(cfg, None, "status")
        self._handlers: dict[str, Handler] = {}
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # mid -> spool seq
        self._early: dict[int, tuple[float, Any]] = {}  # PUBACKs that beat the recording of their mid
        self._last_sent = 0
        self._generation = 0  # bumped on every connect; a send loop from an older connection stops
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._status: dict[str, Any] = {"state": "starting"}
        self._refused: dict[int, str] = {}  # spool seq -> reason, until the broker accepts it
        self._retry_at = 0.0
        self._refused_problem: str | None = None  # the broker refuses verdicts
        self._spool_problem: str | None = None  # the spool cannot be read or updated
        self.sender_beat = time.monotonic()
        self._last_puback = time.monotonic()
        self.connect_failures = 0
        self.last_connect_error: str | None = None
        self.client_id = cfg.client_id or default_client_id(cfg)
        self._v5 = cfg.protocol == "5"
        if self._v5:
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                      protocol=mqtt.MQTTv5)
        else:
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                      protocol=mqtt.MQTTv311, clean_session=False)
        self.client.manual_ack_set(True)
        # our sender keeps its own window; paho's would queue behind messages it counts from an old session
        self.client.max_inflight_messages_set(0)
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password())
        if cfg.tls:
            self.client.tls_set(ca_certs=str(cfg.tls.ca), certfile=str(cfg.tls.cert) if cfg.tls.cert else None,
                                keyfile=str(cfg.tls.key) if cfg.tls.key else None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.will_set(self.status_topic, json.dumps({"state": "offline"}), qos=1, retain=True)
        self.client.reconnect_delay_set(max(1, int(cfg.reconnect_min_s)), max(1, int(cfg.reconnect_max_s)))
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._net = threading.Thread(target=self._net_loop, name="mqtt-network", daemon=True)

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = _SESSION_EXPIRY_S
            self.client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s, clean_start=False,
                                      properties=props)
        else:
            self.client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
        # paho treats a client with a network thread as threaded (publish from other threads only queues); this
        # is what loop_start() does, with a thread we own so that health can see it die
        self.client._thread = self._net  # noqa: SLF001
        self._net.start()
        self._sender.start()

    def _net_loop(self) -> None:
        try:
            self.client.loop_forever(retry_first_connection=True)
        except Exception:  # noqa: BLE001 - recorded: health() reports the dead thread and systemd restarts us
            log.exception("mqtt: network loop died")
        self._connected.clear()

    @property
    def problem(self) -> str | None:
        """Why delivery is failing (status 'degraded'), None when healthy."""
        return "; ".join(p for p in (self._refused_problem, self._spool_problem) if p) or None

    def sender_state(self) -> dict[str, Any]:
        """What the sender is doing, for the status topic: verdicts awaiting PUBACK, last spool row sent."""
        with self._lock:
            return {"inflight": len(self._inflight), "last_sent": self._last_sent,
                    "retry_in_s": round(max(0.0, self._retry_at - time.monotonic()), 1),
                    "refused": sorted(self._refused)[:10]}

    def alive(self) -> str | None:
        """None while the network and sender threads run; otherwise which one died."""
        if not self._stop.is_set():
            if not self._net.is_alive():
                return "mqtt network thread died"
            if not self._sender.is_alive():
                return "mqtt sender thread died"
            if time.monotonic() - self.sender_beat > 30:
                return "mqtt sender thread stalled for 30 s"
        return None

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Register a handler; (re)subscribed on every connect."""
        self._handlers[topic] = handler
        if self.is_connected:
            self._subscribe(self.client, topic)

    def _subscribe(self, client: mqtt.Client, topic: str) -> None:
        if self._v5:
            # keep the retain flag on live messages too, so a handler can refuse a retained command at once
            client.subscribe(topic, options=SubscribeOptions(qos=1, retainAsPublished=True))
        else:
            client.subscribe(topic, qos=1)

    def set_status(self, status: dict[str, Any]) -> None:
        """Publish the retained status (not spooled: only the latest matters)."""
        self._status = status
        if self.is_connected:
            self.client.publish(self.status_topic, json.dumps(status), qos=1, retain=True)

    def publish_now(self, topic: str, payload: dict[str, Any]) -> None:
        """Publish a message that needs no spool (command results): QoS 1, not retained, dropped if offline."""
        if self.is_connected:
            self.client.publish(topic, json.dumps(payload), qos=1)

    def wake(self) -> None:
        """A verdict was spooled: send it."""
        self._wake.set()

    def flush(self, timeout_s: float) -> bool:
        """Wait until the spool is empty (all verdicts accepted) or the timeout passes."""
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
        self._net.join(5)  # bounded: a loop stuck in a reconnect must not hold up a stop that systemd is timing
        self._sender.join(timeout=2)

    # --- paho callbacks (network thread): nothing may raise out of them -------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.connect_failures += 1
            self.last_connect_error = f"refused by {self.cfg.host}:{self.cfg.port}: {reason}"
            log.error("mqtt: connection %s", self.last_connect_error)
            return
        log.info("mqtt: connected to %s:%s as %s", self.cfg.host, self.cfg.port, self.client_id)
        self.last_connect_error = None
        with self._lock:
            self._inflight.clear()
            self._early.clear()
            self._generation += 1
            self._last_sent = 0  # resend everything not yet accepted, oldest first
        for topic in self._handlers:
            self._subscribe(client, topic)
        client.publish(self.status_topic, json.dumps(self._status), qos=1, retain=True)
        self._connected.set()
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.connect_failures += 1
        msg = f"cannot reach broker {self.cfg.host}:{self.cfg.port}; verdicts stay spooled on disk"
        if self.last_connect_error != msg:
            log.error("mqtt: %s (retrying)", msg)
        self.last_connect_error = msg

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("mqtt: disconnected (%s); verdicts stay spooled on disk", reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        # runs on paho's network thread while paho holds its own locks: never call into paho from here
        self._last_puback = time.monotonic()
        with self._lock:
            seq = self._inflight.pop(mid, None)
            if seq is None:
                now = time.monotonic()
                self._early = {m: v for m, v in self._early.items() if now - v[0] < 5.0}  # status PUBACKs age out
                self._early[mid] = (now, reason)
                return
        self._settle(seq, reason)

    def _settle(self, seq: int, reason: Any) -> None:
        """A PUBACK for spool row seq: delete it if accepted; keep, count and report it if refused."""
        if reason is not None and getattr(reason, "is_failure", False):
            why = f"broker refused verdict {seq}: {reason}"
            with self._lock:
                first = seq not in self._refused
                self._refused[seq] = why
            self._rewind(seq)
            self._refused_problem = why + " (kept on disk; check the broker's ACL for the verdict topic)"
            if first:
                try:
                    self.queue.count_refused()
                except SpoolError as err:
                    log.error("%s", err)
                log.error("mqtt: %s; kept in the spool and retried every %.0f s", why, _REFUSED_RETRY_S)
            return
        try:
            self.queue.ack(seq)
        except SpoolError as err:  # accepted but not deleted (disk full): send it again later, same id
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
        """Send row seq (and what follows) again after a back-off: it is still in the spool."""
        with self._lock:
            self._retry_at = time.monotonic() + _REFUSED_RETRY_S
            self._last_sent = min(self._last_sent, seq - 1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        acked = False

        def ack() -> None:
            nonlocal acked
            if not acked and msg.qos > 0:
                acked = True
                try:
                    client.ack(msg.mid, msg.qos)
                except (ValueError, RuntimeError) as err:  # disconnected meanwhile: the broker redelivers
                    log.debug("mqtt: ack of %s failed: %s", msg.mid, err)

        handled = False
        for pattern, handler in list(self._handlers.items()):
            if mqtt.topic_matches_sub(pattern, msg.topic):
                handled = True
                try:
                    handler(msg, ack)
                except Exception:  # noqa: BLE001 - a hostile message must never kill paho's network thread
                    log.exception("mqtt: handler for %s failed; message dropped", msg.topic)
                    ack()
        if not handled:
            ack()

    # --- sender thread ---------------------------------------------------------------------------
    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self.sender_beat = time.monotonic()
            self._wake.wait(0.2)
            self._wake.clear()
            if not self.is_connected or time.monotonic() < self._retry_at:
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
            if self._inflight and time.monotonic() - self._last_puback > _PUBACK_STALL_S:
                # PUBACKs stopped coming on a live connection: send everything not yet accepted again (same ids)
                log.warning("mqtt: no PUBACK for %.0f s with %d verdicts in flight; sending them again",
                            _PUBACK_STALL_S, len(self._inflight))
                self._inflight.clear()
                self._last_sent = 0
                self._last_puback = time.monotonic()
            room = self.window - len(self._inflight)
            after = self._last_sent
            generation = self._generation
        if room <= 0:
            return
        for row in self.queue.pending(after, room):
            # publish outside our lock: paho calls _on_publish holding its own lock (lock-order inversion)
            info = self.client.publish(row.topic, row.payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                break  # not connected any more: the next connect resends from the oldest
            with self._lock:
                if generation != self._generation or time.monotonic() < self._retry_at:
                    break  # reconnected or refused meanwhile: sending resumes from the oldest not accepted
                early = self._early.pop(info.mid, None)
                if early is None:
                    self._inflight[info.mid] = row.seq
                self._last_sent = max(self._last_sent, row.seq)
            if early is not None:
                self._settle(row.seq, early[1])
