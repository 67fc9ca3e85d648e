"""`edge-daemon --check`: everything the real start needs, checked without starting: the bundle verifies and
passes its self-test, the folders exist and are writable, and every configured broker accepts a connection."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import paho.mqtt.client as mqtt

from edge.config import DaemonConfig, FolderSource, MqttConfig, SparkplugConfig
from edge.errors import EdgeError

__all__ = ["run_checks"]


def _writable_dir(p: Path, what: str, create: bool = False) -> str | None:
    if create and not p.exists():
        parent = next((q for q in p.parents if q.exists()), None)
        if parent is None or not os.access(parent, os.W_OK):
            return f"{what} {p} does not exist and cannot be created (make it, owned by the daemon's user)"
        return None
    if not p.is_dir():
        return f"{what} {p} does not exist; create it or fix the config"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"{what} {p} is not writable by this user; chown it to the daemon's user"
    return None


def _broker(cfg: MqttConfig, host: str, port: int, timeout_s: float) -> str | None:
    """Connect and wait for the CONNACK; None when the broker accepted us."""
    done = threading.Event()
    result: list[str | None] = ["no answer"]
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"lineside-check-{os.getpid()}",
                    protocol=mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311)
    if cfg.username:
        c.username_pw_set(cfg.username, cfg.password())
    if cfg.tls:
        c.tls_set(ca_certs=str(cfg.tls.ca), certfile=str(cfg.tls.cert) if cfg.tls.cert else None,
                  keyfile=str(cfg.tls.key) if cfg.tls.key else None)

    def on_connect(client: mqtt.Client, u: object, f: object, reason: mqtt.ReasonCode, p: object) -> None:
        result[0] = f"refused the connection: {reason}" if reason.is_failure else None
        done.set()

    c.on_connect = on_connect
    try:
        c.connect(host, port, keepalive=10)
    except (OSError, ValueError) as err:
        return f"broker {host}:{port} cannot be reached: {err}; check mqtt.host/port and the firewall"
    c.loop_start()
    done.wait(timeout_s)
    c.disconnect()
    c.loop_stop()
    return None if result[0] is None else f"broker {host}:{port} {result[0]}; check the credentials and ACL"


def run_checks(cfg: DaemonConfig, timeout_s: float = 5.0) -> tuple[list[str], list[str]]:
    """(ok lines, problems); the daemon can start when problems is empty."""
    from edge.scoring import load_model
    from edge.signing import Trust

    ok: list[str] = []
    bad: list[str] = []
    try:
        trust = Trust.from_files(cfg.trust.keys, cfg.state_dir / "trust.json")
        m = load_model(cfg.bundle, cfg.backend.device, cfg.cache_dir, cfg.backend.threads, trust)
        signed = f"signed by key {m.bundle.signed_by}" if m.bundle.signed_by else "unsigned (no trust.keys)"
        ok.append(f"bundle {m.bundle.digest} ({signed}) self-test passed on {m.backend.info.runtime} "
                  f"{m.backend.info.device}")
        m.backend.close()
    except EdgeError as err:
        bad.append(str(err))
    for what, p in (("state_dir", cfg.state_dir), ("cache_dir", cfg.cache_dir)):
        err = _writable_dir(p, what, create=True)
        (bad.append(err) if err else ok.append(f"{what} {p} usable"))
    for st in cfg.stations:
        if isinstance(st.source, FolderSource):
            s = st.source
            for what, p, create in ((f"station {st.name}: watched folder", s.path, False),
                                    (f"station {st.name}: done_dir", s.done_dir or s.path / "done", True),
                                    (f"station {st.name}: failed_dir", s.failed_dir or s.path / "failed", True)):
                err = _writable_dir(p, what, create)
                (bad.append(err) if err else ok.append(f"{what} {p} usable"))
    brokers = [(cfg.mqtt, cfg.mqtt.host, cfg.mqtt.port)] + [(cfg.mqtt, b.host, b.port) for b in cfg.mqtt.failover]
    for pub in cfg.publishers:
        if isinstance(pub, SparkplugConfig) and pub.broker is not None:
            brokers += [(pub.broker, pub.broker.host, pub.broker.port)]
            brokers += [(pub.broker, b.host, b.port) for b in pub.broker.failover]
    for bcfg, host, port in brokers:
        err = _broker(bcfg, host, port, timeout_s)
        (bad.append(err) if err else ok.append(f"broker {host}:{port} accepted a connection"))
    return ok, bad
