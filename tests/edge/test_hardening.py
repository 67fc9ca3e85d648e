"""Issue 16's attacks and faults, reproduced against the real daemon, a real mosquitto and real bundles: only a
trusted model inspects, and every frame gets exactly one verdict that reaches SCADA."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from conftest import Mosquitto
from edge.bundle import load_bundle
from edge.errors import SpoolError, TrustError
from edge.queue import VerdictQueue
from edge.signing import Trust, generate_key, load_private_key, sign_manifest
from edge_helpers import Subscriber, edge_config, start_daemon, stop_daemon, wait_for


# --- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, Path, str]]:
    d = tmp_path_factory.mktemp("keys")
    return {name: generate_key(d / name) for name in ("plant", "stranger")}


@pytest.fixture(scope="module")
def signed(tiny_run, keys, tmp_path_factory) -> Path:
    """An FP32 CPU bundle signed with the plant key, bundle_version 100, built by the real edge-deploy."""
    out = tmp_path_factory.mktemp("signed") / "bundles" / "v100"
    r = subprocess.run([sys.executable, "-m", "deploy.cli", "--target", "cpu", "--precision", "fp32", str(tiny_run),
                        "--out", str(out), "--sign-key", str(keys["plant"][0]), "--bundle-version", "100"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (out / "manifest.sig").is_file() and "--no-same-owner" in r.stdout
    return out


def _resign(src: Path, dst: Path, key: Path | None, **changes: object) -> Path:
    """A copy of bundle src with manifest fields changed, signed like edge-deploy signs (or unsigned)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m.update(changes)
    (dst / "manifest.json").write_text(json.dumps(m, indent=2))
    (dst / "manifest.sig").unlink()
    if key is not None:
        sign_manifest(dst, load_private_key(key))
    return dst


def _png(w: int, h: int) -> bytes:
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _good_frame(tiny_data: Path) -> bytes:
    return sorted((tiny_data / "test").rglob("*.png"))[0].read_bytes()


# --- trust ------------------------------------------------------------------------------------------------
def test_only_bundles_signed_by_a_trusted_key_load(signed, keys, tmp_path):
    trust = Trust.from_files([keys["plant"][1]], tmp_path / "trust.json")
    fp = keys["plant"][2]
    assert load_bundle(signed, trust).signed_by == fp
    assert load_bundle(signed).signed_by is None  # no keys configured: hashes only, as before

    edited = tmp_path / "edited"
    shutil.copytree(signed, edited)
    m = json.loads((edited / "manifest.json").read_text())
    m["threshold"] = 1e9  # the always-pass edit of the attack
    (edited / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TrustError, match=f"tampered after signing.*{fp}"):
        load_bundle(edited, trust)

    unsigned = _resign(signed, tmp_path / "unsigned", None, threshold=1e9)
    with pytest.raises(TrustError, match=f"not signed.*key {fp}"):
        load_bundle(unsigned, trust)

    foreign = _resign(signed, tmp_path / "foreign", keys["stranger"][0], threshold=1e9)
    with pytest.raises(TrustError, match=f"signed by key {keys['stranger'][2]}, expected key {fp}"):
        load_bundle(foreign, trust)

    trust.accept(200)
    with pytest.raises(TrustError, match="older than 200.*rollback refused"):
        load_bundle(signed, trust)
    newer = _resign(signed, tmp_path / "v300", keys["plant"][0], bundle_version=300)
    assert load_bundle(newer, trust).version == 300


def test_verify_and_check_refuse_tampering_with_one_line(signed, keys, tmp_path):
    bad = _resign(signed, tmp_path / "bad", keys["stranger"][0], threshold=1e9)
    r = subprocess.run([sys.executable, "-m", "deploy.cli", "verify", str(bad), "--key", str(keys["plant"][1])],
                       capture_output=True, text=True)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert keys["plant"][2] in r.stderr and keys["stranger"][2] in r.stderr
    cfg = edge_config(tmp_path, bad, {"port": 1})
    c = json.loads(json.dumps(__import__("yaml").safe_load(cfg.read_text())))
    c["trust"] = {"keys": [str(keys["plant"][1])]}
    cfg.write_text(json.dumps(c))
    r = subprocess.run([sys.executable, "-m", "edge.cli", "--config", str(cfg), "--check"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and f"expected key {keys['plant'][2]}" in r.stderr, r.stderr


def test_printed_install_steps_work_on_first_install_and_upgrade(signed, keys, tmp_path):
    """Run the install steps edge-deploy prints (sudo and ssh aside) in a temporary root, twice."""
    from deploy.bundle import install_steps

    root = tmp_path / "opt"
    archive = signed.with_name(signed.name + ".tar.gz")
    for version, src in ((100, archive), (300, None)):
        if src is None:  # an upgrade: a newer signed bundle, archived the way edge-deploy archives
            import tarfile

            newer = _resign(signed, tmp_path / "v300", keys["plant"][0], bundle_version=300)
            src = tmp_path / "v300.tar.gz"
            with tarfile.open(src, "w:gz") as tar:
                tar.add(newer, arcname="v300-v300")
        top = "v100-v100" if version == 100 else "v300-v300"
        steps = install_steps(str(src), top, root=str(root), key=str(keys["plant"][1]))
        steps = [s.replace(f"{root}/venv/bin/edge-deploy", f"{sys.executable} -m deploy.cli") for s in steps]
        r = subprocess.run(["sh", "-ec", "; ".join(steps)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        current = root / "bundles" / "current"
        assert current.is_symlink() and load_bundle(current).version == version
    assert (root / "bundles" / "v100-v100").is_dir()  # the previous version stays, for a rollback by hand


# --- commands ---------------------------------------------------------------------------------------------
class _Commander:
    """A plant-side client that sends commands and collects their results."""

    def __init__(self, port: int) -> None:
        self.results: list[dict] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ops-{time.time_ns()}", protocol=mqtt.MQTTv5)
        self.c.on_connect = lambda c, *_: c.subscribe("lineside/line1/set/result", qos=1)
        self.c.on_message = lambda c, u, m: self.results.append(json.loads(m.payload))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        time.sleep(0.5)

    def send(self, payload: object, retain: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.c.publish("lineside/line1/set", data, qos=1, retain=retain).wait_for_publish(5)

    def result(self, cmd_id: str, result: str, timeout: float = 60) -> dict:
        assert wait_for(lambda: any(r.get("id") == cmd_id and r["result"] == result for r in self.results), timeout), \
            self.results
        return next(r for r in self.results if r.get("id") == cmd_id and r["result"] == result)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _drop(inbox: Path, name: str, data: bytes) -> None:
    (inbox / f".{name}").write_bytes(data)
    (inbox / f".{name}").rename(inbox / name)


def test_remote_commands_cannot_swap_or_silence_inspection(broker, signed, keys, tiny_data, tmp_path):
    bundles = signed.parent
    newer = _resign(signed, bundles / "v300", keys["plant"][0], bundle_version=300)
    unsigned = _resign(signed, bundles / "unsigned", None, threshold=1e9)
    cfg = edge_config(tmp_path, signed, {"port": broker.port, "keepalive_s": 5})
    c = __import__("yaml").safe_load(cfg.read_text())
    c["trust"] = {"keys": [str(keys["plant"][1])]}
    c["commands"] = {"enabled": True, "bundle_dir": str(bundles)}
    cfg.write_text(json.dumps(c))
    inbox = tmp_path / "inbox"
    sub = Subscriber(broker.port)
    ops = _Commander(broker.port)
    p = start_daemon(cfg)
    try:
        assert wait_for(lambda: any(s.get("state") == "online" for s in sub.status), 90)
        ops.send({"command": "reload", "bundle": 123, "id": "m1"})  # killed paho's thread before
        assert "malformed" in ops.result("m1", "refused")["reason"]
        ops.send(b"\xff\xfe not json")
        ops.send({"command": "reload", "id": "r1", "bundle": str(newer)}, retain=True)
        assert "retained" in ops.result("r1", "refused")["reason"]
        ops.send({"command": "reload", "id": "o1", "bundle": str(tmp_path)})
        assert "commands.bundle_dir" in ops.result("o1", "refused")["reason"]
        ops.send({"command": "reload", "id": "u1", "bundle": str(unsigned)})
        assert "not signed" in ops.result("u1", "failed")["reason"]
        _drop(inbox, "a.png", _good_frame(tiny_data))
        sub.wait(1, 60)  # still inspecting, with the trusted bundle
        assert sub.verdicts[-1]["bundle"] == load_bundle(signed).digest
        ops.send({"command": "reload", "id": "n1", "bundle": str(newer)})
        ops.result("n1", "applied")
        _drop(inbox, "b.png", _good_frame(tiny_data)[:-1] + b"\x82")  # other content: a new frame
        sub.wait(2, 60)
        assert sub.verdicts[-1]["bundle"] == load_bundle(newer).digest
        ops.send({"command": "reload", "id": "b1", "bundle": str(signed)})  # back to version 100
        assert "rollback refused" in ops.result("b1", "failed")["reason"]
    finally:
        ops.close()
        sub.close()
        out = stop_daemon(p)
    assert "Traceback" not in out, out[-3000:]


def test_commands_are_off_by_default(broker, signed, tiny_data, tmp_path):
    bundles = signed.parent
    other = _resign(signed, tmp_path / "other", None, threshold=1e9)
    cfg = edge_config(tmp_path, signed, {"port": broker.port})
    sub = Subscriber(broker.port)
    ops = _Commander(broker.port)
    p = start_daemon(cfg)
    try:
        assert wait_for(lambda: any(s.get("state") == "online" for s in sub.status), 90)
        ops.send({"command": "reload", "id": "x", "bundle": str(other)})
        _drop(tmp_path / "inbox", "a.png", _good_frame(tiny_data))
        sub.wait(1, 60)
        time.sleep(1)
    finally:
        ops.close()
        sub.close()
        stop_daemon(p)
    assert ops.results == [] and bundles.exists()
    assert {v["bundle"] for v in sub.verdicts} == {load_bundle(signed).digest}


# --- delivery ---------------------------------------------------------------------------------------------
def test_verdicts_the_broker_refuses_are_kept_counted_and_reported(signed, tiny_data, tmp_path):
    b = Mosquitto()
    b.dir.chmod(0o755)  # mosquitto started as root reads its ACL file as the mosquitto user
    acl = b.dir / "acl"
    acl.write_text("topic readwrite lineside/line1/status\ntopic read lineside/#\n")  # verdict topic: denied
    b.conf.write_text(f"listener {b.port} 127.0.0.1\nallow_anonymous true\npersistence false\nacl_file {acl}\n")
    b.start()
    cfg = edge_config(tmp_path, signed, {"port": b.port})
    sub = Subscriber(b.port)
    p = start_daemon(cfg)
    try:
        for i in range(3):
            _drop(tmp_path / "inbox", f"{i}.png", _good_frame(tiny_data)[:-1] + bytes([i]))
        def refused(s: dict) -> bool:
            return (s.get("state") == "degraded" and s.get("refused_verdicts", 0) >= 1
                    and any("broker refused" in x for x in s.get("problems", [])))

        assert wait_for(lambda: any(refused(s) for s in sub.status), 60), sub.status[-3:]
        assert sub.verdicts == []
        acl.write_text("topic readwrite lineside/#\n")
        b.proc.send_signal(signal.SIGHUP)  # mosquitto reloads its ACL
        sub.wait(3, 60)
    finally:
        sub.close()
        out = stop_daemon(p)
        b.close()
    assert len({v["id"] for v in sub.verdicts}) == 3, out[-2000:]
    assert "broker refused verdict" in out


def test_hostile_frames_become_error_verdicts_and_the_line_goes_on(broker, signed, tiny_data, tmp_path):
    import random

    rng = random.Random(7)
    good = _good_frame(tiny_data)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _drop(inbox, "bomb.png", _png(30000, 30000))  # killed the daemon at every start
    for i in range(12):  # header mutations
        d = bytearray(good)
        for _ in range(4):
            d[rng.randrange(8, 64)] = rng.randrange(256)
        _drop(inbox, f"m{i:02d}.png", bytes(d))
    cfg = edge_config(tmp_path, signed, {"port": broker.port},
                      source={"type": "folder", "path": str(inbox), "incomplete_wait_s": 0.5})
    sub = Subscriber(broker.port)
    p = start_daemon(cfg)
    try:
        sub.wait(13, 60)
        _drop(inbox, "later.png", good)
        sub.wait(14, 60)
    finally:
        sub.close()
        out = stop_daemon(p)
    by = {Path(v["frame"]).name: v for v in sub.verdicts}
    assert by["bomb.png"]["outcome"] == "error" and "decompression bomb" in by["bomb.png"]["error"]
    assert by["later.png"]["outcome"] in ("ok", "ng")
    assert (inbox / "failed" / "bomb.png").is_file() and "Traceback" not in out


# --- identity, spool --------------------------------------------------------------------------------------
def _daemon(tmp_path: Path, bundle: Path, **folder: object):
    from edge.app import Daemon
    from edge.config import load_config

    src = {"type": "folder", "path": str(tmp_path / "inbox"), "settle_s": 0, **folder}
    return Daemon(load_config(edge_config(tmp_path, bundle, {"port": 1}, source=src)))


def test_a_frame_seen_again_after_a_crash_keeps_its_one_verdict(signed, tiny_data, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _drop(inbox, "part.png", _good_frame(tiny_data))
    d = _daemon(tmp_path, signed)
    f = d.sources[0].poll()[0]
    f.done = None  # "kill -9" between spooling the verdict and moving the file
    first = d.handle(f)
    d.queue.close()
    d2 = _daemon(tmp_path, signed)
    again = d2.sources[0].poll()[0]
    assert d2.handle(again) is None  # same frame: no second verdict, no second id
    assert (inbox / "done" / "part.png").is_file()
    rows = d2.queue.pending()
    assert len(rows) == 1 and json.loads(rows[0].payload)["id"] == first.id
    assert json.loads(rows[0].payload)["seq"] == 1


def test_status_before_start_is_not_degraded_by_threads_not_yet_started(signed, tmp_path):
    (tmp_path / "inbox").mkdir()
    d = _daemon(tmp_path, signed)
    st = d.status("online")  # what run() publishes first (was: "degraded: mqtt network thread died")
    assert st["state"] == "online" and st["problems"] == [], st["problems"]
    d.queue.close()


def test_a_frame_that_cannot_be_moved_is_scored_once(signed, tiny_data, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    done = tmp_path / "out" / "done"
    d = _daemon(tmp_path, signed, done_dir=str(done))
    shutil.rmtree(done)
    done.write_text("not a folder")  # every move to done/ fails
    _drop(inbox, "part.png", _good_frame(tiny_data))
    n = 0
    for _ in range(20):
        for f in d.sources[0].poll():
            n += d.handle(f) is not None
    assert n == 1 and d.queue.depth() == 1  # was 194 verdicts in 5 s


def test_a_frame_the_daemon_died_on_twice_is_poison_once_is_retried(signed, tiny_data, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _drop(inbox, "part.png", _good_frame(tiny_data))
    d = _daemon(tmp_path, signed)
    f = d.sources[0].poll()[0]
    from edge.app import frame_id

    (tmp_path / "state" / "inflight.json").write_text(json.dumps({"id": frame_id(f), "attempts": 1}))
    d.queue.close()
    d = _daemon(tmp_path, signed)  # one death while scoring it may be unrelated (kill -9, power): scored again
    assert d.poison.begin(frame_id(f), "x") == 2 and d.score(f, frame_id(f), 2).outcome in ("ok", "ng")
    d.queue.close()
    d = _daemon(tmp_path, signed)  # the start after a second death while scoring it
    v = d.handle(d.sources[0].poll()[0])
    assert v.outcome == "error" and "not scored again" in v.error
    assert (inbox / "failed" / "part.png").is_file()


def test_spool_quarantines_damaged_rows_and_recovers_a_damaged_file(tmp_path):
    path = tmp_path / "q.sqlite"
    q = VerdictQueue(path, 1000)
    for i in range(6):
        q.record(f"id{i}", "s1", "t/verdict", lambda seq, i=i: json.dumps({"i": i, "seq": seq}).encode())
    q.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE q SET payload = randomblob(40) WHERE seq = 3")  # the garbage once forwarded to SCADA
    db.execute("UPDATE q SET topic = CAST(x'ff00fe' AS TEXT) WHERE seq = 4")  # killed the sender thread
    db.commit()
    db.close()
    q = VerdictQueue(path, 1000)
    rows = q.pending()
    assert [json.loads(r.payload)["i"] for r in rows] == [0, 1, 4, 5]  # damaged rows 3 and 4 never forwarded
    assert q.stat("quarantined") == 2
    assert q.seen("id2") == 3  # the frame keeps its verdict identity even though its row was damaged
    q.close()

    raw = bytearray(path.read_bytes())
    page = 4096
    raw[page: page + 64] = b"\xa5" * 64  # a damaged page (was: sender dies, then a crash loop)
    path.write_bytes(bytes(raw))
    q = VerdictQueue(path, 1000)
    assert q.incident and "moved aside" in q.incident
    assert list(tmp_path.glob("q.sqlite.corrupt-*"))
    assert q.record("id9", "s1", "t/verdict", lambda seq: b"{}") is not None  # and it goes on spooling
    q.close()


def test_spool_full_disk_is_an_error_not_a_crash_and_old_verdicts_stay(tmp_path):
    q = VerdictQueue(tmp_path / "q.sqlite", 1000)
    q._db.execute("PRAGMA max_page_count = 12")  # the disk is full
    with pytest.raises(SpoolError, match="free disk space"):
        for i in range(10_000):
            q.record(f"id{i}", "s1", "t", lambda seq: b"x" * 2000)
    n = q.depth()
    assert n > 0 and q.dropped() == 0
    q._db.execute("PRAGMA max_page_count = 100000")
    assert q.record("late", "s1", "t", lambda seq: b"{}") == n + 1  # the sequence goes on without a gap
    q.close()
    old = VerdictQueue(tmp_path / "q2.sqlite", 1000)  # no age limit by default: a clock jump drops nothing
    old.put("t", b"{}")
    old._db.execute("UPDATE q SET created = 0")
    old.put("t", b"{}")
    assert old.depth() == 2 and old.dropped() == 0
    old.close()


def test_broken_sender_stops_the_watchdog_and_the_daemon(broker, signed, tmp_path, monkeypatch):
    from edge.app import Daemon
    from edge.config import load_config

    (tmp_path / "inbox").mkdir()
    d = Daemon(load_config(edge_config(tmp_path, signed, {"port": broker.port})))
    d.queue.put("lineside/line1/s1/verdict", b"{}")

    def boom(*a: object, **k: object) -> list:
        raise RuntimeError("injected: sender fault")

    monkeypatch.setattr(d.queue, "pending", boom)
    pings: list[str] = []
    monkeypatch.setattr("edge.app.notify", lambda *lines: pings.extend(lines) or True)
    t0 = time.monotonic()
    assert d.run(stop_after_idle_s=60) == 1  # exits for systemd to restart it, long before the idle limit
    assert time.monotonic() - t0 < 30


def test_default_client_id_is_unique_per_box():
    from edge.config import MqttConfig
    from edge.connection import default_client_id

    cid = default_client_id(MqttConfig())
    assert cid.startswith("lineside-line1-") and len(cid) > len("lineside-line1-")


def test_mqtt_triggers_survive_a_daemon_that_is_down(broker, signed, tiny_data, tmp_path):
    cfg = edge_config(tmp_path, signed, {"port": broker.port}, source={"type": "mqtt", "topic": "plant/trigger"})
    sub = Subscriber(broker.port)
    p = start_daemon(cfg)
    assert wait_for(lambda: any(s.get("state") == "online" for s in sub.status), 90)
    stop_daemon(p)  # a clean stop keeps the persistent session at the broker
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="camera", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    pub.publish("plant/trigger", _good_frame(tiny_data), qos=1).wait_for_publish(5)  # while nobody listens
    p = start_daemon(cfg)
    try:
        sub.wait(1, 60)
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.close()
        stop_daemon(p)
    assert len(sub.verdicts) >= 1 and sub.verdicts[0]["outcome"] in ("ok", "ng")
