"""What the daemon tests share: a daemon config, starting/stopping the real daemon, a plant-side subscriber."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
import pytest
import yaml


def edge_config(tmp_path: Path, bundle: Path, mqtt_cfg: dict[str, Any], source: dict[str, Any] | None = None,
                metrics: dict[str, Any] | None = None) -> Path:
    """Write a daemon config for one station (a folder inbox under tmp_path unless `source` is given)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    cfg = {"bundle": str(bundle), "state_dir": str(tmp_path / "state"), "cache_dir": str(tmp_path / "cache"),
           "mqtt": {"host": "127.0.0.1", "reconnect_min_s": 0.5, "reconnect_max_s": 1, **mqtt_cfg},
           "metrics": metrics or {"enabled": False},
           "stations": [{"name": "s1", "source": source or {"type": "folder", "path": str(inbox)}}]}
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def start_daemon(cfg: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The real edge-daemon in a subprocess, its output captured for failure messages."""
    return subprocess.Popen([sys.executable, "-m", "edge.cli", "--config", str(cfg), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_daemon(p: subprocess.Popen, timeout: float = 60) -> str:
    """SIGTERM and wait; a daemon that does not stop dumps its threads' stacks (SIGUSR1) into the failure."""
    p.send_signal(signal.SIGTERM)
    try:
        out, _ = p.communicate(timeout=timeout)
        return out or ""
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGUSR1)
        time.sleep(1)
        p.kill()
        out, _ = p.communicate()
        pytest.fail(f"daemon did not stop within {timeout} s after SIGTERM:\n{out[-6000:]}")


def wait_for(pred: Callable[[], Any], timeout: float = 60) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.1)
    return False


class Subscriber:
    """A plant-side QoS-1 subscriber: JSON payloads of `topic`, split into verdicts and everything else."""

    def __init__(self, port: int, topic: str = "lineside/#", client_id: str | None = None,
                 clean_session: bool = True) -> None:
        self.verdicts: list[dict] = []
        self.status: list[dict] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"scada-{time.time_ns()}",
                                  clean_session=clean_session)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._msg
        self.client.reconnect_delay_set(1, 2)  # back soon after a broker restart
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        # returning before the SUBACK would let a fast publisher's first messages go to no one
        if not self._subscribed.wait(30):
            raise RuntimeError(f"subscriber got no SUBACK from the broker on port {port} within 30 s")

    def _msg(self, c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        if m.topic.endswith("/verdict"):
            self.verdicts.append(json.loads(m.payload))
        elif m.topic.endswith("/status"):
            self.status.append(json.loads(m.payload))

    def wait(self, n: int, timeout: float = 60) -> None:
        """Until n distinct verdicts arrived (or the timeout)."""
        wait_for(lambda: len({v["id"] for v in self.verdicts}) >= n, timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
