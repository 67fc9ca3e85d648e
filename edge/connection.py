"""One MQTT connection (paho-mqtt 2.x, callback API v2), shared by whatever talks over it: publishers, the MQTT
trigger source and remote commands. It owns the client, TLS and credentials, the will, the subscriptions (restored
on every connect), hand-made acknowledgements of received messages, PUBACK routing, and broker failover.

Failover: `mqtt.host` first, then each `mqtt.failover` entry; every failed attempt or lost connection moves to
the next broker in the list (wrapping to the first), with paho's back-off between attempts. Whoever uses the
connection hears about each (re)connect and can send its births there.
"""

from __future__ import annotations

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

__all__ = ["MqttConnection", "Handler", "AckCallback", "topic_for", "default_client_id"]

log = logging.getLogger(__name__)

# handler(message, ack): call ack() once the message is safely handled (for triggers: once the verdict is spooled)
Handler = Callable[[mqtt.MQTTMessage, Callable[[], None]], None]
# on_ack(reason): the broker's PUBACK (QoS 1) or the write to the socket (QoS 0); reason.is_failure when refused
AckCallback = Callable[[Any], None]
_SESSION_EXPIRY_S = 24 * 3600  # triggers queued by the broker for a daemon that is down survive a day


def topic_for(cfg: MqttConfig, station: str | None, leaf: str) -> str:
    """<prefix>/<line>/<station>/<leaf>, or <prefix>/<line>/<leaf> for the daemon itself."""
    parts = [cfg.prefix, cfg.line] + ([station] if station else []) + [leaf]
    return "/".join(parts)


def default_client_id(cfg: MqttConfig) -> str:
    """Unique per box and stable across restarts (a persistent session needs a fixed id): line + host name."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:40]
    return f"lineside-{cfg.line}-{host}"


class MqttConnection:
    """A broker connection with failover. `persistent`: MQTT 5 session expiry / 3.1.1 clean_session=False, so
    the broker keeps QoS 1 messages for us while we are away (Sparkplug requires a clean session instead)."""

    def __init__(self, cfg: MqttConfig, name: str = "mqtt", client_id: str | None = None,
                 persistent: bool = True) -> None:
        self.cfg = cfg
        self.name = name
        self.client_id = client_id or cfg.client_id or default_client_id(cfg)
        self.persistent = persistent
        self.servers = [(cfg.host, cfg.port)] + [(b.host, b.port) for b in cfg.failover]
        self._next = 0  # index into servers of the next connection attempt
        self.server = self.servers[0]
        self._handlers: dict[str, Handler] = {}
        self._connect_listeners: list[Callable[[], None]] = []
        self._disconnect_listeners: list[Callable[[], None]] = []
        self._pre_connect: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._acks: dict[int, AckCallback] = {}
        self._early: dict[int, tuple[float, Any]] = {}  # PUBACKs that beat the recording of their mid
        self._connected = threading.Event()
        self._stop = threading.Event()
        self.generation = 0  # bumped on every connect
        self.connect_failures = 0
        self.last_connect_error: str | None = None
        self.last_ack = time.monotonic()
        self._v5 = cfg.protocol == "5"
        if self._v5:
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                      protocol=mqtt.MQTTv5)
        else:
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                      protocol=mqtt.MQTTv311, clean_session=not persistent)
        self.client.manual_ack_set(True)
        # publishers keep their own windows; paho's would queue behind messages it counts from an old session
        self.client.max_inflight_messages_set(0)
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password())
        if cfg.tls:
            self.client.tls_set(ca_certs=str(cfg.tls.ca), certfile=str(cfg.tls.cert) if cfg.tls.cert else None,
                                keyfile=str(cfg.tls.key) if cfg.tls.key else None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.reconnect_delay_set(max(1, int(cfg.reconnect_min_s)), max(1, int(cfg.reconnect_max_s)))
        self.client.on_pre_connect = self._on_pre_connect
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self._net = threading.Thread(target=self._net_loop, name=f"{name}-network", daemon=True)

    # --- set-up by the users of the connection (before start) ------------------------------------
    def will(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        """The message the broker publishes if we vanish; may be changed before each connect (Sparkplug bdSeq)."""
        self.client.will_set(topic, payload, qos=qos, retain=retain)

    def on_connect(self, fn: Callable[[], None]) -> None:
        """fn() runs on the network thread after every successful connect, once subscriptions are restored."""
        self._connect_listeners.append(fn)

    def on_disconnect(self, fn: Callable[[], None]) -> None:
        self._disconnect_listeners.append(fn)

    def before_connect(self, fn: Callable[[], None]) -> None:
        """fn() runs before every connection attempt (to set the will for that attempt)."""
        self._pre_connect.append(fn)

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Register a handler; (re)subscribed on every connect."""
        self._handlers[topic] = handler
        if self.is_connected:
            self._subscribe(topic)

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        host, port = self.servers[0]
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = _SESSION_EXPIRY_S if self.persistent else 0
            self.client.connect_async(host, port, self.cfg.keepalive_s, clean_start=not self.persistent,
                                      properties=props)
        else:
            self.client.connect_async(host, port, self.cfg.keepalive_s)
        # paho treats a client with a network thread as threaded (publish from other threads only queues); this
        # is what loop_start() does, with a thread we own so that health can see it die
        self.client._thread = self._net  # noqa: SLF001
        self._net.start()

    def _net_loop(self) -> None:
        try:
            self.client.loop_forever(retry_first_connection=True)
        except Exception:  # noqa: BLE001 - recorded: alive() reports the dead thread and systemd restarts us
            log.exception("%s: network loop died", self.name)
        self._connected.clear()

    def alive(self) -> str | None:
        """None while the network thread runs (or before it was started); otherwise that it died."""
        if not self._stop.is_set() and self._net.ident is not None and not self._net.is_alive():
            return f"{self.name} network thread died"
        return None

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                on_ack: AckCallback | None = None) -> bool:
        """Queue one message; False when not connected. on_ack runs (network thread) when the broker answers."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        if on_ack is not None:
            with self._lock:
                early = self._early.pop(info.mid, None)
                if early is None:
                    self._acks[info.mid] = on_ack
            if early is not None:
                on_ack(early[1])
        return True

    def forget_acks(self) -> None:
        """Drop PUBACK routes (a publisher resends everything it had in flight)."""
        with self._lock:
            self._acks.clear()
            self._early.clear()

    def close(self, last: list[tuple[str, bytes | str, bool]] | None = None) -> None:
        """Publish the last messages (topic, payload, retain; QoS 1), then disconnect cleanly (no will)."""
        self._stop.set()
        if self.is_connected:
            for topic, payload, retain in last or []:
                info = self.client.publish(topic, payload, qos=1, retain=retain)
                try:
                    info.wait_for_publish(2.0)
                except (RuntimeError, ValueError):
                    pass
        self.client.disconnect()
        if self._net.ident is not None:  # never started (a daemon stopped before its loop ran): nothing to join
            self._net.join(5)  # bounded: a loop stuck in a reconnect must not hold up a stop that systemd is timing

    # --- paho callbacks (network thread): nothing may raise out of them ------------------------------
    def _subscribe(self, topic: str) -> None:
        if self._v5:
            # keep the retain flag on live messages too, so a handler can refuse a retained command at once
            self.client.subscribe(topic, options=SubscribeOptions(qos=1, retainAsPublished=True))
        else:
            self.client.subscribe(topic, qos=1)

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        self.server = self.servers[self._next % len(self.servers)]
        # paho's reconnect() reads these right after this hook; its public setters refuse while connecting
        client._host, client._port = self.server  # noqa: SLF001
        for fn in self._pre_connect:
            _guard(fn, f"{self.name}: before-connect hook")

    def _advance(self) -> None:
        if len(self.servers) > 1:
            self._next = (self._next + 1) % len(self.servers)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        host, port = self.server
        if reason.is_failure:
            self.connect_failures += 1
            self.last_connect_error = f"refused by {host}:{port}: {reason}"
            log.error("%s: connection %s", self.name, self.last_connect_error)
            self._advance()
            return
        log.info("%s: connected to %s:%s as %s", self.name, host, port, self.client_id)
        self.last_connect_error = None
        self.forget_acks()
        self.generation += 1
        for topic in self._handlers:
            self._subscribe(topic)
        self._connected.set()
        for fn in self._connect_listeners:
            _guard(fn, f"{self.name}: on-connect hook")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.connect_failures += 1
        host, port = self.server
        msg = f"cannot reach broker {host}:{port}; verdicts stay spooled on disk"
        if self.last_connect_error != msg:
            log.error("%s: %s (retrying%s)", self.name, msg,
                      ", next broker in the failover list" if len(self.servers) > 1 else "")
        self.last_connect_error = msg
        self._advance()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if not self._stop.is_set():
            if was:
                log.warning("%s: disconnected from %s:%s (%s); verdicts stay spooled on disk", self.name,
                            *self.server, reason)
            self._advance()
        for fn in self._disconnect_listeners:
            _guard(fn, f"{self.name}: on-disconnect hook")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        # runs on paho's network thread while paho holds its own locks: never call into paho from here
        self.last_ack = time.monotonic()
        with self._lock:
            fn = self._acks.pop(mid, None)
            if fn is None:
                now = time.monotonic()
                self._early = {m: v for m, v in self._early.items() if now - v[0] < 5.0}  # untracked ones age out
                self._early[mid] = (now, reason)
                return
        _guard(lambda: fn(reason), f"{self.name}: PUBACK handler")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        acked = False

        def ack() -> None:
            nonlocal acked
            if not acked and msg.qos > 0:
                acked = True
                try:
                    client.ack(msg.mid, msg.qos)
                except (ValueError, RuntimeError) as err:  # disconnected meanwhile: the broker redelivers
                    log.debug("%s: ack of %s failed: %s", self.name, msg.mid, err)

        handled = False
        for pattern, handler in list(self._handlers.items()):
            if mqtt.topic_matches_sub(pattern, msg.topic):
                handled = True
                try:
                    handler(msg, ack)
                except Exception:  # noqa: BLE001 - a hostile message must never kill paho's network thread
                    log.exception("%s: handler for %s failed; message dropped", self.name, msg.topic)
                    ack()
        if not handled:
            ack()


def _guard(fn: Callable[[], None], what: str) -> None:
    """Run a hook on paho's network thread: an exception is logged, never allowed to kill the thread."""
    try:
        fn()
    except Exception:  # noqa: BLE001
        log.exception("%s failed", what)
