"""Daemon benchmark: frames/s and latency from frame arrival to the verdict a subscriber receives (median,
p99) on 1920x1080 JPEG frames, for the JSON publisher, the Sparkplug B publisher and both at once, and lost
verdicts over a run with one broker outage in the middle (and a kill -9 with --kill).

    python -m bench.daemon BUNDLE --images DIR --frames 10000 --kill --repeats 3
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import yaml
from PIL import Image

from bench.common import machine, save, table
from edge.contract import read_manifest


def _jpegs(src_dir: Path, n: int = 8) -> list[bytes]:
    out = []
    for p in sorted(src_dir.rglob("*.png"))[:n]:
        img = Image.open(p).convert("RGB").resize((1920, 1080), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class _Receiver:
    """The plant side: JSON verdicts, or Sparkplug DDATA (aliases resolved from the DBIRTH), timed on arrival."""

    def __init__(self, port: int, mode: str, client_id: str) -> None:
        self.port, self.mode, self.client_id = port, mode, client_id
        self.got: dict[str, tuple[float, dict]] = {}
        self.lock = threading.Lock()
        self.alias: dict[int, str] = {}
        self.c = self._connect()

    def _on_msg(self, c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        now = time.time()
        if m.topic.endswith("/verdict"):
            v = json.loads(m.payload)
            key, rec = Path(v["frame"]).name, v
        else:
            from edge.publishers.sparkplug_pb import Payload

            p = Payload.FromString(m.payload)
            if "/DBIRTH/" in m.topic:
                self.alias.update({x.alias: x.name for x in p.metrics})
                return
            if "/DDATA/" not in m.topic:
                return
            vals = {self.alias.get(x.alias, ""): x for x in p.metrics}
            rec = {"outcome": vals["Inspection/Outcome"].string_value,
                   "historical": vals["Inspection/Outcome"].is_historical}
            key = Path(vals["Inspection/Frame"].string_value).name
        with self.lock:
            self.got.setdefault(key, (now, rec))

    def _connect(self) -> mqtt.Client:
        # a persistent session on a persistent broker, as a plant's SCADA client has: the broker keeps the
        # subscription and queues verdicts across its own restart, so nothing depends on who reconnects first
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False)
        topic = "lineside/+/+/verdict" if self.mode == "json" else "spBv1.0/#"
        c.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)
        c.on_message = self._on_msg
        c.connect("127.0.0.1", self.port)
        c.loop_start()
        return c

    def close(self) -> None:
        self.c.loop_stop()


def run_once(a: argparse.Namespace, publishers: str, jpegs: list[bytes]) -> dict:
    """One run: frames through the real daemon with one broker outage (and a kill -9 if asked)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import Mosquitto, free_port  # the same real broker the tests use

    work = Path(tempfile.mkdtemp(prefix="lineside-bench-"))
    inbox = work / "inbox"
    inbox.mkdir()
    broker = Mosquitto()
    broker.dir.chmod(0o777)  # mosquitto drops to its own user and must write its database there
    broker.conf.write_text(f"listener {broker.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                           f"persistence_location {broker.dir}/\nautosave_interval 1\n")
    broker.start()
    mport = free_port()
    spb = {"type": "sparkplug", "edge_node_id": "bench", "qos": a.sparkplug_qos}
    pubs = {"json": [{"type": "json"}], "sparkplug": [spb], "both": [{"type": "json"}, spb]}[publishers]
    cfg = {"bundle": str(a.bundle.resolve()), "state_dir": str(work / "state"), "cache_dir": str(work / "cache"),
           "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 0.5, "reconnect_max_s": 1},
           "metrics": {"port": mport}, "heatmaps": {"enabled": False}, "publishers": pubs,
           "stations": [{"name": "s1", "source": {"type": "folder", "path": str(inbox)}}]}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "edge.cli", "--config", str(work / "config.yaml"), "--log-level", "WARNING"]
    daemon = subprocess.Popen(cmd)
    # latency is timed at the subscriber of the protocol under test; with both, the Sparkplug side (the slower)
    rx = _Receiver(broker.port, "json" if publishers == "json" else "sparkplug", f"scada-{publishers}-1")
    rx_json = _Receiver(broker.port, "json", f"scada-{publishers}-2") if publishers == "both" else None
    arrival: dict[str, float] = {}
    outage_at, kill_at = a.frames // 2, (3 * a.frames) // 4 if a.kill else -1
    t_start = time.time()
    t_out = 0.0
    for i in range(a.frames):
        while len(list(inbox.glob("*.jpg"))) >= a.window:
            time.sleep(0.001)
        name = f"{i:06d}.jpg"
        tmp = inbox / f".{name}"
        tmp.write_bytes(jpegs[i % len(jpegs)])
        arrival[name] = time.time()
        tmp.rename(inbox / name)
        if i == outage_at:
            broker.stop()
            t_out = time.time()
        if i > outage_at and broker.proc is None and time.time() - t_out > a.outage_s:
            broker.start()  # the receivers' paho loops reconnect by themselves
        if i == kill_at:
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(10)
            daemon = subprocess.Popen(cmd)
        if i % 500 == 0:
            shutil.rmtree(inbox / "done", ignore_errors=True)
            (inbox / "done").mkdir(exist_ok=True)
            print(f"[{publishers}] {i}/{a.frames} frames, {len(rx.got)} verdicts received", flush=True)
    if broker.proc is None:
        broker.start()
    end = time.time() + 120
    while (len(rx.got) < a.frames or (rx_json and len(rx_json.got) < a.frames)) and time.time() < end:
        time.sleep(0.2)
    elapsed = time.time() - t_start
    try:
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics").read().decode()
    except OSError:
        metrics = ""
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(60)
    for r in (rx, rx_json):
        if r:
            r.close()
    broker.stop()
    shutil.rmtree(work, ignore_errors=True)

    def hist_mean(stage: str) -> float:
        m = re.search(rf'lineside_latency_ms_sum{{stage="{stage}"}} ([0-9.e+]+)', metrics)
        c = re.search(rf'lineside_latency_ms_count{{stage="{stage}"}} ([0-9.e+]+)', metrics)
        return float(m.group(1)) / max(float(c.group(1)), 1) if m and c else float("nan")

    # live latency: frames before the outage only (after it, verdicts wait on disk by design)
    e2e = [(rx.got[n][0] - arrival[n]) * 1e3 for n in rx.got if n in arrival and int(n[:6]) < outage_at]
    lost = a.frames - len(rx.got) + (a.frames - len(rx_json.got) if rx_json else 0)
    return {"publishers": publishers, "sparkplug_qos": a.sparkplug_qos if publishers != "json" else None,
            "frames": a.frames, "received": len(rx.got), "lost": lost,
            "frames_per_s": a.frames / elapsed, "e2e_median_ms": float(np.median(e2e)),
            "e2e_p99_ms": float(np.percentile(e2e, 99)), "publish_ms": hist_mean("publish"),
            "inference_ms": hist_mean("inference"), "outage_s": a.outage_s, "kill9": bool(a.kill),
            "runtime": read_manifest(a.bundle).runtime}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--images", type=Path, required=True, help="folder of source images (PNG), made into 1080p JPEGs")
    ap.add_argument("--publishers", default="json,sparkplug,both", help="comma list of json, sparkplug, both")
    ap.add_argument("--repeats", type=int, default=1, help="runs per publisher set; the table shows medians")
    ap.add_argument("--sparkplug-qos", type=int, choices=(0, 1), default=0,
                    help="QoS of DDATA: 0 as the specification requires (the default), 1 to let the spool see PUBACKs")
    ap.add_argument("--kill", action="store_true", help="also kill -9 the daemon at 3/4 of the run (and restart it)")
    ap.add_argument("--outage-s", type=float, default=12.0)
    ap.add_argument("--window", type=int, default=2, help="frames in the inbox at once")
    ap.add_argument("--out", type=Path, default=Path("bench-out/daemon"))
    a = ap.parse_args()
    jpegs = _jpegs(a.images)
    rows, runs = [], []
    for pubs in a.publishers.split(","):
        reps = [run_once(a, pubs, jpegs) for _ in range(a.repeats)]
        runs += reps
        med = {k: (float(np.median([r[k] for r in reps])) if isinstance(reps[0][k], float) else reps[0][k])
               for k in reps[0]}
        med["lost"] = sum(r["lost"] for r in reps)  # every loss counts, not the median
        rows.append(med)
    save(a.out / "daemon.json", {"machine": machine(), "rows": rows, "runs": runs})
    print(table(rows, list(rows[0])))
    return 0 if all(r["lost"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
