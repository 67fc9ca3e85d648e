"""Sparkplug B against a real mosquitto and the real daemon, judged by Eclipse Tahu's JavaScript decoder (node),
not by Lineside's own: births and deaths paired by bdSeq, seq continuity and wrap, every DDATA metric born in its
DBIRTH, rebirth on NCMD, historical replay in order, failover, and two publishers with one of them offline."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

from conftest import Mosquitto, mosquitto_exe
from edge.publishers.sparkplug import DEVICE_METRICS, NODE_METRICS
from edge_helpers import Subscriber, edge_config, start_daemon, stop_daemon, wait_for

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
GROUP, NODE = "plant", "box1"


def _tahu(lines: list[dict[str, Any]], mode: str = "decode") -> list[dict[str, Any]]:
    r = subprocess.run(["node", str(NODE_DIR / "decode_sparkplug.js"), mode], input="\n".join(map(json.dumps, lines)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [json.loads(x) for x in r.stdout.splitlines()]


@pytest.fixture(scope="module", autouse=True)
def _needs_tools():
    if mosquitto_exe() is None:
        pytest.skip("mosquitto not installed (scripts/setup.sh installs it)")
    if shutil.which("node") is None or not (NODE_DIR / "node_modules" / "sparkplug-payload").is_dir():
        pytest.skip("node and tests/node/node_modules missing (scripts/setup.sh runs npm install there)")


class Recorder:
    """Everything under spBv1.0/# in arrival order, raw; decode() runs Tahu over it."""

    def __init__(self, port: int) -> None:
        self.raw: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"host-{time.time_ns()}")
        self.client.on_connect = lambda c, *_: c.subscribe("spBv1.0/#", qos=1)
        self.client.on_message = self._msg
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_for(lambda: self.client.is_connected(), 10)
        time.sleep(0.3)

    def _msg(self, c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.raw.append((m.topic, bytes(m.payload)))

    def count(self, kind: str) -> int:
        with self._lock:
            return sum(1 for t, _ in self.raw if t.split("/")[2] == kind)

    def decode(self) -> list[dict[str, Any]]:
        with self._lock:
            raw = list(self.raw)
        out = _tahu([{"topic": t, "hex": p.hex()} for t, p in raw if "/STATE/" not in t])
        assert all("error" not in m for m in out), [m for m in out if "error" in m][:3]
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _config(tmp_path: Path, bundle: Path, port: int, sparkplug: dict[str, Any] | None = None,
            mqtt_extra: dict[str, Any] | None = None) -> Path:
    p = edge_config(tmp_path, bundle, {"port": port, **(mqtt_extra or {})})
    cfg = yaml.safe_load(p.read_text())
    cfg["publishers"] = [{"type": "json"}, {"type": "sparkplug", "group_id": GROUP, "edge_node_id": NODE,
                                            **(sparkplug or {})}]
    cfg["stations"][0]["source"]["settle_s"] = 0.05
    p.write_text(yaml.safe_dump(cfg))
    return p


def _frames(tiny_data: Path, inbox: Path, n: int, start: int = 0) -> None:
    imgs = sorted((tiny_data / "test" / "good").glob("*.png")) + sorted((tiny_data / "test" / "structural").glob("*.png"))
    for i in range(start, start + n):
        tmp = inbox / f".{i:05d}.png"
        shutil.copy(imgs[i % len(imgs)], tmp)
        tmp.rename(inbox / f"{i:05d}.png")


def _metrics(msg: dict[str, Any]) -> dict[str, Any]:
    return {m.get("name", m.get("alias")): m for m in msg["payload"]["metrics"]}


def _kind(msg: dict[str, Any]) -> str:
    return msg["topic"].split("/")[2]


def _check_session(msgs: list[dict[str, Any]]) -> None:
    """seq: NBIRTH 0, then +1 per message (wrapping at 255); DDATA aliases all born in the session's DBIRTH."""
    seq = None
    born: dict[str, set[int]] = {}
    for m in msgs:
        kind = _kind(m)
        if kind in ("NDEATH", "NCMD", "DCMD"):
            continue
        if kind == "NBIRTH":
            assert m["payload"]["seq"] == 0
            seq, born = 0, {}
            continue
        assert seq is not None, f"{kind} before any NBIRTH"
        assert m["payload"]["seq"] == (seq + 1) % 256, (kind, m["payload"]["seq"], seq)
        seq = m["payload"]["seq"]
        station = m["topic"].split("/")[4] if kind.startswith("D") else None
        if kind == "DBIRTH":
            born[station] = {x["alias"] for x in m["payload"]["metrics"]}
            assert {x["name"] for x in m["payload"]["metrics"]} == set(DEVICE_METRICS)
        elif kind == "DDEATH":
            born.pop(station, None)
        elif kind == "DDATA":
            aliases = {x["alias"] for x in m["payload"]["metrics"]}
            assert aliases <= born[station], "DDATA metric without a DBIRTH"
            assert all("name" not in x for x in m["payload"]["metrics"])  # aliases only


def test_sparkplug_session_rebirth_and_both_publishers(broker, bundle, tiny_data, tmp_path):
    rec = Recorder(broker.port)
    sub = Subscriber(broker.port)
    p = start_daemon(_config(tmp_path, bundle, broker.port))
    try:
        assert wait_for(lambda: rec.count("DBIRTH") >= 1, 90), "no DBIRTH"
        _frames(tiny_data, tmp_path / "inbox", 4)
        assert wait_for(lambda: rec.count("DDATA") >= 4, 90)
        sub.wait(4, 30)
        ncmd = _tahu([{"topic": "x", "payload": {"timestamp": int(time.time() * 1000), "metrics": [
            {"name": "Node Control/Rebirth", "type": "Boolean", "value": True}]}}], "encode")[0]
        rec.client.publish(f"spBv1.0/{GROUP}/NCMD/{NODE}", bytes.fromhex(ncmd["hex"]), qos=0)
        assert wait_for(lambda: rec.count("NBIRTH") >= 2, 30), "no rebirth after NCMD"
        _frames(tiny_data, tmp_path / "inbox", 2, start=4)
        assert wait_for(lambda: rec.count("DDATA") >= 6, 60)
    finally:
        out = stop_daemon(p)
    assert wait_for(lambda: rec.count("NDEATH") >= 1, 10), out[-3000:]
    msgs = rec.decode()
    rec.close()
    sub.close()
    _check_session(msgs)
    births = [m for m in msgs if _kind(m) == "NBIRTH"]
    death = [m for m in msgs if _kind(m) == "NDEATH"][0]
    b0 = _metrics(births[0])
    assert {"bdSeq", "Node Control/Rebirth", *NODE_METRICS} == set(b0)
    assert b0["Node Control/Rebirth"]["value"] is False and b0["Properties/Bundle"]["value"]
    # the rebirth keeps the connection's bdSeq, and the NDEATH carries it too
    assert _metrics(births[1])["bdSeq"]["value"] == b0["bdSeq"]["value"] == _metrics(death)["bdSeq"]["value"]
    dbirth = next(m for m in msgs if _kind(m) == "DBIRTH")
    alias = {x["alias"]: x["name"] for x in dbirth["payload"]["metrics"]}
    ids = []
    for m in (m for m in msgs if _kind(m) == "DDATA"):
        named = {alias[x["alias"]]: x for x in m["payload"]["metrics"]}
        assert named["Inspection/Outcome"]["value"] in ("ok", "ng")
        assert not named["Inspection/Score"].get("isHistorical")  # broker up all along: live values
        ids.append(named["Inspection/Verdict Id"]["value"])
    # the JSON publisher delivered the same verdicts beside it
    assert set(ids) == {v["id"] for v in sub.verdicts} and len(set(ids)) == 6


def test_sparkplug_seq_wraps_and_spooled_verdicts_replay_as_history_in_order(broker, bundle, tmp_path):
    from edge.queue import VerdictQueue
    from edge.verdict import Latency, Verdict, iso_utc

    cfg = _config(tmp_path, bundle, broker.port)
    (tmp_path / "state").mkdir(exist_ok=True)
    q = VerdictQueue(tmp_path / "state" / "queue.sqlite", 1000, consumers=["json", "sparkplug"])
    t = time.time() - 3600
    for i in range(300):  # what a daemon spooled while the broker was away
        v = Verdict(id=f"id{i}", seq=1, station="s1", line="line1", frame=f"/x/{i}.png", outcome="ok", score=0.1,
                    threshold=1.0, captured_at=iso_utc(t + i), captured_unix_ms=int((t + i) * 1000),
                    scored_at=iso_utc(t + i), scored_unix_ms=int((t + i) * 1000), scored_monotonic_ms=i, model="m",
                    model_version="1", bundle="b", software_version="x", latency=Latency(total_ms=1.0))

        def build(seq: int, v: Verdict = v) -> bytes:
            v.seq = seq
            return v.to_bytes()
        q.record(v.id, "s1", "lineside/line1/s1/verdict", build)
    q.close()
    rec = Recorder(broker.port)
    p = start_daemon(cfg)
    try:
        assert wait_for(lambda: rec.count("DDATA") >= 300, 120), rec.count("DDATA")
    finally:
        stop_daemon(p)
    msgs = rec.decode()
    rec.close()
    _check_session(msgs)  # seq runs 0..255 and on through 0 again without a gap
    data = [m for m in msgs if _kind(m) == "DDATA"]
    assert any(m["payload"]["seq"] == 0 for m in data)
    dbirth = next(m for m in msgs if _kind(m) == "DBIRTH")
    alias = {x["name"]: x["alias"] for x in dbirth["payload"]["metrics"]}
    seqs, stamps = [], []
    for m in data:
        by = {x["alias"]: x for x in m["payload"]["metrics"]}
        seqs.append(by[alias["Inspection/Seq"]]["value"])
        stamps.append(by[alias["Inspection/Score"]]["timestamp"])
        assert all(x.get("isHistorical") for x in m["payload"]["metrics"])  # never shown as live values
    assert seqs == list(range(1, 301))  # in spool order
    assert stamps == sorted(stamps) and stamps[0] == int(t * 1000)  # each at the time it was made


def test_kill9_gives_the_brokers_ndeath_with_the_births_bdseq(broker, bundle, tmp_path):
    rec = Recorder(broker.port)
    p = start_daemon(_config(tmp_path, bundle, broker.port))
    try:
        assert wait_for(lambda: rec.count("NBIRTH") >= 1, 90)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        assert wait_for(lambda: rec.count("NDEATH") >= 1, 60)  # the will, published by the broker
        p = start_daemon(_config(tmp_path, bundle, broker.port))
        assert wait_for(lambda: rec.count("NBIRTH") >= 2, 90)
    finally:
        stop_daemon(p)
    msgs = rec.decode()
    rec.close()
    births = [_metrics(m)["bdSeq"]["value"] for m in msgs if _kind(m) == "NBIRTH"]
    deaths = [_metrics(m)["bdSeq"]["value"] for m in msgs if _kind(m) == "NDEATH"]
    assert deaths[0] == births[0]  # the broker's NDEATH names the session that died
    assert births[1] == (births[0] + 1) % 256  # a new connection, the next bdSeq (persisted across the crash)


def test_failover_and_an_offline_sparkplug_broker_never_block_json(bundle, tiny_data, tmp_path):
    a, b, spb = Mosquitto(), Mosquitto(), Mosquitto()
    a.start()
    b.start()
    p = None
    try:
        cfg = _config(tmp_path, bundle, a.port, mqtt_extra={"failover": [{"host": "127.0.0.1", "port": b.port}]},
                      sparkplug={"broker": {"host": "127.0.0.1", "port": spb.port, "reconnect_max_s": 1}})
        sub_a, sub_b = Subscriber(a.port), Subscriber(b.port)
        p = start_daemon(cfg)
        inbox = tmp_path / "inbox"
        _frames(tiny_data, inbox, 3)
        sub_a.wait(3, 90)
        assert len({v["id"] for v in sub_a.verdicts}) == 3  # JSON flows while the Sparkplug broker is down
        a.stop()  # the primary broker fails: the daemon moves to the second one
        _frames(tiny_data, inbox, 3, start=3)
        sub_b.wait(3, 90)
        assert {Path(v["frame"]).name for v in sub_b.verdicts} >= {f"{i:05d}.png" for i in range(3, 6)}
        spb.start()  # the Sparkplug broker comes up: everything spooled for it arrives, as history
        rec = Recorder(spb.port)
        assert wait_for(lambda: rec.count("DDATA") >= 6, 90), rec.count("DDATA")
        msgs = rec.decode()
        rec.close()
        sub_a.close()
        sub_b.close()
    finally:
        if p is not None:
            stop_daemon(p)
        for x in (a, b, spb):
            x.close()
    _check_session(msgs)
    assert sum(1 for m in msgs if _kind(m) == "DDATA") == 6


def test_nothing_is_published_until_the_primary_host_is_online(broker, bundle, tiny_data, tmp_path):
    rec = Recorder(broker.port)
    p = start_daemon(_config(tmp_path, bundle, broker.port, sparkplug={"primary_host_id": "scada"}))
    try:
        _frames(tiny_data, tmp_path / "inbox", 2)
        time.sleep(8)  # scored and spooled meanwhile
        assert rec.count("NBIRTH") == 0 and rec.count("DDATA") == 0
        state = "spBv1.0/STATE/scada"
        rec.client.publish(state, json.dumps({"online": True, "timestamp": int(time.time() * 1000)}), qos=1,
                           retain=True)
        assert wait_for(lambda: rec.count("DDATA") >= 2, 60)
        rec.client.publish(state, json.dumps({"online": False, "timestamp": int(time.time() * 1000) + 1}), qos=1,
                           retain=True)
        time.sleep(1)
        _frames(tiny_data, tmp_path / "inbox", 1, start=2)
        time.sleep(5)
        assert rec.count("DDATA") == 2  # host offline: the verdict waits in the spool
        rec.client.publish(state, json.dumps({"online": True, "timestamp": int(time.time() * 1000) + 2}), qos=1,
                           retain=True)
        assert wait_for(lambda: rec.count("DDATA") >= 3 and rec.count("NBIRTH") >= 2, 60)
    finally:
        stop_daemon(p)
    msgs = rec.decode()
    rec.close()
    _check_session(msgs)
    data = [m for m in msgs if _kind(m) == "DDATA"]
    # spooled before the birth that followed the host's return: history, never live
    assert all(x.get("isHistorical") for m in (data[0], data[1], data[2]) for x in m["payload"]["metrics"])


def test_a_failed_source_gives_ddeath_and_degraded_status_then_dbirth_when_back(broker, bundle, tiny_data, tmp_path):
    rec = Recorder(broker.port)
    sub = Subscriber(broker.port)
    inbox = tmp_path / "inbox"
    p = start_daemon(_config(tmp_path, bundle, broker.port))
    try:
        assert wait_for(lambda: rec.count("DBIRTH") >= 1, 90)
        shutil.rmtree(inbox)  # the camera share goes away
        assert wait_for(lambda: rec.count("DDEATH") >= 1, 30)
        assert wait_for(lambda: any(s.get("state") == "degraded" and any("station s1 down" in x for x in s["problems"])
                                    for s in sub.status), 30)
        inbox.mkdir()
        assert wait_for(lambda: rec.count("DBIRTH") >= 2, 30)
        _frames(tiny_data, inbox, 1)
        assert wait_for(lambda: rec.count("DDATA") >= 1, 60)
        assert p.poll() is None  # the daemon kept running (it used to die with a traceback)
    finally:
        stop_daemon(p)
    msgs = rec.decode()
    rec.close()
    sub.close()
    _check_session(msgs)  # DDEATH and the new DBIRTH take their place in the seq; DDATA only after the DBIRTH
