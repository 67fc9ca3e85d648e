"""TLS with client certificates, password auth, the MQTT trigger source, and bundle swaps on SIGHUP."""

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from conftest import Mosquitto, mosquitto_exe
from edge_helpers import Subscriber, edge_config, start_daemon, stop_daemon, wait_for

pytestmark = pytest.mark.skipif(mosquitto_exe() is None or shutil.which("openssl") is None,
                                reason="mosquitto and openssl needed")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=lineside-test-ca", cwd=d)
    for name, cn in (("server", "127.0.0.1"), ("client", "station-box")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n" if name == "server" else "extendedKeyUsage=clientAuth\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", str(ext), cwd=d)
    return d


def test_tls_client_certificates(pki, bundle, tmp_path):
    b = Mosquitto()
    b.conf.write_text(f"listener {b.port} 127.0.0.1\ncafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\n"
                      f"keyfile {pki / 'server.key'}\nrequire_certificate true\nuse_identity_as_username true\n"
                      "allow_anonymous false\npersistence false\nuser root\n")
    b.start()
    try:
        status: list[dict] = []
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-sub")
        sub.tls_set(ca_certs=str(pki / "ca.crt"), certfile=str(pki / "client.crt"), keyfile=str(pki / "client.key"))
        sub.on_connect = lambda c, *_: c.subscribe("lineside/#", qos=1)
        sub.on_message = lambda c, u, m: status.append(json.loads(m.payload))
        sub.connect("127.0.0.1", b.port)
        sub.loop_start()
        cfg = edge_config(tmp_path, bundle, {"port": b.port, "tls": {"ca": str(pki / "ca.crt"), "cert": str(pki / "client.crt"),
                                                                 "key": str(pki / "client.key")}})
        p = start_daemon(cfg)
        try:
            assert wait_for(lambda: any(s.get("state") == "online" for s in status))
        finally:
            stop_daemon(p)
            sub.loop_stop()
        # a client without a certificate never gets a successful CONNACK
        anon = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="anon")
        anon.tls_set(ca_certs=str(pki / "ca.crt"))
        accepted: list[bool] = []
        anon.on_connect = lambda c, u, f, rc, p: accepted.append(not rc.is_failure)
        try:
            anon.connect("127.0.0.1", b.port)
            anon.loop_start()
            time.sleep(3)
        except OSError:
            pass  # refused during the TLS handshake
        finally:
            anon.loop_stop()
        assert True not in accepted
        assert any(s.get("state") == "online" for s in status)  # while the certified daemon got in
    finally:
        b.close()


def test_password_auth_refuses_anonymous(tmp_path):
    b = Mosquitto()
    pw = b.dir / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "plant", "s3cret"], check=True, capture_output=True)
    b.conf.write_text(f"listener {b.port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\npersistence false\nuser root\n")
    b.start()
    try:
        results = {}
        for name, creds in (("anonymous", None), ("plant", ("plant", "s3cret"))):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
            if creds:
                c.username_pw_set(*creds)
            c.on_connect = lambda cl, u, f, rc, p, name=name: results.__setitem__(name, rc.is_failure)
            c.connect("127.0.0.1", b.port)
            c.loop_start()
            assert wait_for(lambda: name in results, 10)
            c.loop_stop()
        assert results == {"anonymous": True, "plant": False}
    finally:
        b.close()


def test_mqtt_trigger_answers_with_correlation_id(broker, bundle, tiny_data, tmp_path):
    cfg = edge_config(tmp_path, bundle, {"port": broker.port},
                      {"type": "mqtt", "topic": "plc/line1/s1/trigger", "path_root": str(tiny_data)})
    sub = Subscriber(broker.port, "lineside/line1/s1/verdict", "plc")
    verdicts = sub.verdicts
    p = start_daemon(cfg)
    try:
        img = sorted((tiny_data / "test/structural_anomalies").glob("*.png"))[0]
        time.sleep(1)
        for _ in range(100):  # the daemon subscribes once it is connected: keep triggering until answered
            sub.client.publish("plc/line1/s1/trigger", json.dumps({"id": "part-4711", "path": str(img)}), qos=1)
            if wait_for(lambda: verdicts, 1):
                break
        sub.client.publish("plc/line1/s1/trigger", img.read_bytes(), qos=1)  # raw image bytes work too
        assert wait_for(lambda: len(verdicts) >= 2)
    finally:
        stop_daemon(p)
        sub.close()
    assert verdicts[0]["correlation_id"] == "part-4711" and verdicts[0]["outcome"] in ("ok", "ng")
    assert verdicts[-1]["outcome"] in ("ok", "ng")
    assert len({v["id"] for v in verdicts}) == 2  # the repeated trigger is one frame: one verdict id


def test_sighup_keeps_old_bundle_when_new_one_fails(broker, bundle, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(bundle, live)
    cfg = edge_config(tmp_path, live, {"port": broker.port})
    sub = Subscriber(broker.port, "lineside/line1/status", "hup")
    status = sub.status
    p = start_daemon(cfg)
    try:
        assert wait_for(lambda: any(s.get("state") == "online" for s in status))
        (live / "golden.npz").write_bytes(b"broken")  # the update on disk is corrupt
        p.send_signal(signal.SIGHUP)
        assert wait_for(lambda: any((s.get("last_error") or "").startswith("bundle update refused") for s in status))
    finally:
        stop_daemon(p)
        sub.close()
    assert p.returncode == 0  # the old bundle kept running and stopped cleanly
