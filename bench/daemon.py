"""Daemon benchmark: frames/s and latency from frame arrival to the verdict a subscriber receives (median,
p99), the daemon's own overhead (decode + preprocess + publish) as a share of inference on 1920x1080 JPEG
frames, and lost verdicts over a long run with one broker outage in the middle.

    python -m bench.daemon BUNDLE --frames 10000 --out bench-out/daemon
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


def _jpegs(src_dir: Path, n: int = 8) -> list[bytes]:
    out = []
    for p in sorted(src_dir.rglob("*.png"))[:n]:
        img = Image.open(p).convert("RGB").resize((1920, 1080), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import Mosquitto, free_port  # the same real broker the tests use

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--images", type=Path, help="folder of source images (default: the bundle's golden set is not enough; "
                    "pass a dataset folder)", required=True)
    ap.add_argument("--outage-s", type=float, default=12.0)
    ap.add_argument("--window", type=int, default=2, help="frames in the inbox at once")
    ap.add_argument("--out", type=Path, default=Path("bench-out/daemon"))
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lineside-bench-"))
    inbox = work / "inbox"
    inbox.mkdir()
    broker = Mosquitto()
    broker.start()
    mport = free_port()
    cfg = {"bundle": str(a.bundle.resolve()), "state_dir": str(work / "state"), "cache_dir": str(work / "cache"),
           "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 0.5, "reconnect_max_s": 1},
           "metrics": {"port": mport}, "heatmaps": {"enabled": False},
           "stations": [{"name": "s1", "source": {"type": "folder", "path": str(inbox)}}]}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    daemon = subprocess.Popen([sys.executable, "-m", "edge.cli", "--config", str(work / "config.yaml"),
                               "--log-level", "WARNING"])
    got: dict[str, tuple[float, dict]] = {}
    lock = threading.Lock()

    def on_msg(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        v = json.loads(m.payload)
        with lock:
            got.setdefault(Path(v["frame"]).name, (time.time(), v))

    def subscriber() -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{time.time_ns()}")
        c.on_connect = lambda cl, *_: cl.subscribe("lineside/+/+/verdict", qos=1)
        c.on_message = on_msg
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        return c

    sub = subscriber()
    jpegs = _jpegs(a.images)
    arrival: dict[str, float] = {}
    outage_at = a.frames // 2
    t_start = time.time()
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
            broker.start()
            sub.loop_stop()
            sub = subscriber()
        if i % 500 == 0:
            shutil.rmtree(inbox / "done", ignore_errors=True)
            (inbox / "done").mkdir(exist_ok=True)
            print(f"{i}/{a.frames} frames, {len(got)} verdicts received", flush=True)
    if broker.proc is None:
        broker.start()
        sub.loop_stop()
        sub = subscriber()
    end = time.time() + 120
    while len(got) < a.frames and time.time() < end:
        time.sleep(0.2)
    elapsed = time.time() - t_start
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics").read().decode()
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(60)
    sub.loop_stop()
    broker.stop()

    def hist_mean(stage: str) -> float:
        s = float(re.search(rf'lineside_latency_ms_sum{{stage="{stage}"}} ([0-9.e+]+)', metrics).group(1))
        c = float(re.search(rf'lineside_latency_ms_count{{stage="{stage}"}} ([0-9.e+]+)', metrics).group(1))
        return s / max(c, 1)

    verdicts = [v for _, v in got.values()]
    e2e = [(got[n][0] - arrival[n]) * 1e3 for n in got if n in arrival and int(n[:6]) < outage_at]
    dec = np.median([v["latency"]["decode_ms"] for v in verdicts if v["outcome"] != "error"])
    pre = np.median([v["latency"]["preprocess_ms"] for v in verdicts if v["outcome"] != "error"])
    inf = np.median([v["latency"]["inference_ms"] for v in verdicts if v["outcome"] != "error"])
    pub = hist_mean("publish")
    row = {"frames": a.frames, "received": len(got), "lost": a.frames - len(got),
           "errors": sum(v["outcome"] == "error" for v in verdicts), "frames_per_s": a.frames / elapsed,
           "e2e_median_ms": float(np.median(e2e)), "e2e_p99_ms": float(np.percentile(e2e, 99)),
           "decode_ms": float(dec), "preprocess_ms": float(pre), "publish_ms": pub, "inference_ms": float(inf),
           "overhead_share": float((dec + pre + pub) / inf), "outage_s": a.outage_s,
           "runtime": json.loads((a.bundle / "manifest.json").read_text())["runtime"]}
    save(a.out / "daemon.json", {"machine": machine(), "row": row})
    print(table([row], list(row)))
    return 0 if row["lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
