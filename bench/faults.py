"""Fault-injection and fuzz benchmark: the real daemon, a real mosquitto, thousands of frames, and a bad day on the
line — kill -9 at four points, broker outages, a broker ACL refusing verdicts, a damaged spool at a restart, a
full disk, malformed and retained commands, fuzzed and bomb frames — then counts what SCADA received.

    python -m bench.faults BUNDLE --key BUNDLE_KEY.pub --images DATASET --frames 5000 --fuzz 10000

Prints one table and writes bench-out/faults/faults.json. Run as root (tmpfs for the full disk); without it the
full-disk fault is skipped and the table says so.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from PIL import Image

from bench.common import machine, save, table
from bench.fault_phases import inject, tampering

_POINTS = ("score", "spool", "puback", "move")


# --- frames -------------------------------------------------------------------------------------------------
def _chunk(t: bytes, d: bytes) -> bytes:
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))


def _png_bomb(w: int, h: int) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))


def _encodings(png: bytes) -> dict[str, bytes]:
    img = Image.open(io.BytesIO(png)).convert("RGB")
    out = {"png": png}
    for fmt, ext in (("JPEG", "jpg"), ("TIFF", "tif"), ("BMP", "bmp")):
        buf = io.BytesIO()
        img.save(buf, fmt)
        out[ext] = buf.getvalue()
    return out


def _jpeg_bomb(jpg: bytes) -> bytes:
    i = jpg.find(b"\xff\xc0")
    if i < 0:
        return jpg
    b = bytearray(jpg)
    b[i + 5:i + 9] = struct.pack(">HH", 65500, 65500)  # SOF0 height, width
    return bytes(b)


def fuzz_frames(sources: list[bytes], n: int, seed: int) -> list[tuple[str, str, bytes]]:
    """n hostile frames (kind, extension, bytes): header and chunk mutations, truncations, bombs, junk."""
    rng = random.Random(seed)
    encoded = [_encodings(s) for s in sources[:8]]
    out: list[tuple[str, str, bytes]] = []
    kinds = ("header", "header", "chunk", "truncate", "bomb", "junk")
    while len(out) < n:
        enc = rng.choice(encoded)
        ext = rng.choice(list(enc))
        data = bytearray(enc[ext])
        kind = rng.choice(kinds)
        if kind == "header":
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(min(len(data), 96))] = rng.randrange(256)
        elif kind == "chunk":
            start = rng.randrange(len(data))
            span = rng.randint(1, 256)
            mode = rng.randrange(3)
            if mode == 0:
                data[start:start + span] = bytes(rng.randrange(256) for _ in range(min(span, len(data) - start)))
            elif mode == 1:
                del data[start:start + span]
            else:
                data[start:start] = data[start:start + span]
        elif kind == "truncate":
            data = data[:rng.randrange(1, len(data))]
        elif kind == "bomb":
            ext = rng.choice(("png", "jpg"))
            data = bytearray(_png_bomb(rng.choice((30000, 50000, 2**31 - 1)), rng.choice((30000, 65535)))
                             if ext == "png" else _jpeg_bomb(enc["jpg"]))
        else:
            data = bytearray(rng.randbytes(rng.randint(0, 4096)))
        out.append((kind, ext, bytes(data)))
    return out


# --- plant side -----------------------------------------------------------------------------------------------
class Scada:
    """The plant: a persistent QoS-1 session that records every verdict and the latest status."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.ids: dict[str, set[str]] = {}
        self.seqs: set[int] = set()
        self.first_seen: dict[str, float] = {}
        self.garbage = 0
        self.status: dict[str, Any] = {}
        self.results: list[dict[str, Any]] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-scada", clean_session=False)
        self.c.on_connect = lambda c, *_: c.subscribe([("lineside/#", 1)])
        self.c.on_message = self._msg
        self.c.reconnect_delay_set(1, 1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _msg(self, c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(m.payload)
        except ValueError:
            if m.topic.endswith("/verdict"):
                with self.lock:
                    self.garbage += 1
            return
        with self.lock:
            if m.topic.endswith("/verdict"):
                name = Path(str(body.get("frame"))).name
                self.ids.setdefault(name, set()).add(body["id"])
                self.seqs.add(int(body["seq"]))
                self.first_seen.setdefault(name, time.monotonic())
            elif m.topic.endswith("/status"):
                self.status = body
            elif m.topic.endswith("/set/result"):
                self.results.append(body)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


# --- the run -----------------------------------------------------------------------------------------------------
class Run:
    def __init__(self, a: argparse.Namespace, work: Path) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import Mosquitto  # the same real broker the tests use

        self.a = a
        self.work = work
        self.inbox = work / "inbox"
        self.inbox.mkdir()
        self.state = work / "state"
        self.state.mkdir()
        self.tmpfs = False
        if os.geteuid() == 0:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(self.state)], capture_output=True)
            self.tmpfs = r.returncode == 0
        self.broker = Mosquitto()
        self.broker.dir.chmod(0o755)
        self.acl = self.broker.dir / "acl"
        self.acl.write_text("topic readwrite lineside/#\n")
        self.broker.conf.write_text(f"listener {self.broker.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                                    f"persistence_location {self.broker.dir}/\nacl_file {self.acl}\n"
                                    + (f"log_dest file {self.broker.dir}/mosquitto.log\nlog_type all\n" if a.keep else ""))
        if _has_user("mosquitto"):  # mosquitto started as root runs as this user and writes its persistence here
            shutil.chown(self.broker.dir, "mosquitto")
        self.broker.start()
        cfg = {"bundle": str(a.bundle.resolve()), "state_dir": str(self.state), "cache_dir": str(work / "cache"),
               "mqtt": {"host": "127.0.0.1", "port": self.broker.port, "reconnect_min_s": 0.5, "reconnect_max_s": 1,
                        "keepalive_s": 5},
               "metrics": {"enabled": False}, "heatmaps": {"enabled": False},
               "commands": {"enabled": True, "bundle_dir": str(a.bundle.resolve().parent)},
               "stations": [{"name": "s1", "source": {"type": "folder", "path": str(self.inbox), "settle_s": 0.05,
                                                      "incomplete_wait_s": 0.3}}]}
        if a.key:
            cfg["trust"] = {"keys": [str(a.key.resolve())]}
        self.cfg = work / "config.yaml"
        self.cfg.write_text(yaml.safe_dump(cfg))
        self.scada = Scada(self.broker.port)
        self.proc: subprocess.Popen | None = None
        self.exits: list[int] = []
        self.starts: list[float] = []
        self.recovery_s: list[float] = []
        self.events: list[str] = []
        self.log = open(work / "daemon.log", "w")  # noqa: SIM115 - open for the whole run

    def start(self, point: str = "", after: int = 0) -> None:
        env = {**os.environ, "LINESIDE_FAULT_POINT": point, "LINESIDE_FAULT_AFTER": str(after)}
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.fault_harness", "--config", str(self.cfg),
                                      "--log-level", "WARNING"], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.starts.append(time.monotonic())

    def delivered(self) -> int:
        with self.scada.lock:
            return len(self.scada.ids)

    def corrupt_spool(self) -> None:
        db = self.state / "queue.sqlite"
        if db.is_file() and db.stat().st_size > 3 * 4096:
            raw = bytearray(db.read_bytes())
            raw[2 * 4096 + 100:2 * 4096 + 164] = b"\xa5" * 64
            db.write_bytes(bytes(raw))
            self.events.append("spool page damaged before a restart")


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--key", type=Path, help="public key the bundle is signed with (the daemon then trusts only it)")
    ap.add_argument("--images", type=Path, required=True, help="folder of PNG images (any dataset folder)")
    ap.add_argument("--frames", type=int, default=5000, help="good frames")
    ap.add_argument("--fuzz", type=int, default=10_000, help="hostile frames")
    ap.add_argument("--kills", type=int, default=8, help="kill -9 injections, cycling through the four points")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backlog", type=int, default=16, help="frames in the inbox at once")
    ap.add_argument("--out", type=Path, default=Path("bench-out/faults"))
    ap.add_argument("--keep", action="store_true", help="keep the work folder (daemon.log, inbox) for inspection")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    sources = [p.read_bytes() for p in sorted(a.images.rglob("*.png"))[:64]]
    if not sources:
        print(f"bench.faults: error: no PNG images under {a.images}", file=sys.stderr)
        return 2
    frames = [(f"{i:06d}-good.png", sources[i % len(sources)]) for i in range(a.frames)]
    frames += [(f"{a.frames + i:06d}-{k}.{ext}", d) for i, (k, ext, d) in enumerate(fuzz_frames(sources, a.fuzz, a.seed))]
    rng.shuffle(frames)
    work = Path(tempfile.mkdtemp(prefix="lineside-faults-"))
    run = Run(a, work)
    total = len(frames)
    # faults at fixed shares of the stream
    kill_at = sorted(rng.sample(range(total // 20, total * 9 // 10), a.kills))
    plan = {int(total * 0.15): "outage", int(total * 0.3): "commands", int(total * 0.45): "acl",
            int(total * 0.55): "outage", int(total * 0.7): "diskfull"}
    kills_done = 0
    t0 = time.monotonic()
    run.start()
    fed = 0
    last_report = 0.0
    try:
        while fed < total or len(list(run.inbox.glob("*.*"))) > 0:
            # a daemon that exited is restarted, as systemd's Restart=on-failure does
            if run.proc is not None and run.proc.poll() is not None:
                rc = run.proc.returncode
                run.exits.append(rc)
                before = run.delivered()
                if kills_done >= 3 and not any("damaged" in e for e in run.events):
                    run.corrupt_spool()  # once, after the third kill
                run.start()
                restart_t = time.monotonic()
                threading.Thread(target=_watch_recovery, args=(run, before, restart_t), daemon=True).start()
            if kills_done < a.kills and kill_at and fed >= kill_at[0] and run.proc is not None:
                # restart the healthy daemon into one that kills itself at the next point, a few frames on
                kill_at.pop(0)
                point = _POINTS[kills_done % len(_POINTS)]
                kills_done += 1
                run.events.append(f"kill -9 at '{point}'")
                run.proc.terminate()
                run.proc.wait(60)
                run.start(point, rng.randint(3, 30))
            ev = plan.pop(fed, None)
            if ev:
                inject(run, ev)
            n_inbox = sum(1 for p in run.inbox.iterdir() if p.is_file())
            while fed < total and n_inbox < a.backlog:
                name, data = frames[fed]
                tmp = run.inbox / f".{name}"
                tmp.write_bytes(data)
                tmp.rename(run.inbox / name)
                fed += 1
                n_inbox += 1
                if fed in plan:
                    break
            now = time.monotonic()
            if now - last_report > 10:
                last_report = now
                print(f"  {fed}/{total} frames fed, {run.delivered()} verdicts at SCADA, "
                      f"{len(run.exits)} restarts, {now - t0:.0f} s", flush=True)
            time.sleep(0.01)
        deadline = time.monotonic() + 300
        while run.delivered() < total and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)
        run.proc.send_signal(signal.SIGTERM)
        run.proc.wait(60)
        run.exits.append(run.proc.returncode)
    finally:
        if run.proc and run.proc.poll() is None:
            run.proc.kill()
        run.scada.close()
        run.broker.stop()
        if run.tmpfs:
            subprocess.run(["umount", str(run.state)], check=False)
    wall = time.monotonic() - t0
    names = [n for n, _ in frames]
    with run.scada.lock:
        ids = dict(run.scada.ids)
        seqs = set(run.scada.seqs)
        status = dict(run.scada.status)
        results = list(run.scada.results)
    lost = [n for n in names if n not in ids]
    doubles = [n for n, s in ids.items() if len(s) > 1]
    gaps = sorted(set(range(1, max(seqs) + 1)) - seqs) if seqs else []
    quarantined = int(status.get("quarantined_verdicts", 0) or 0)
    ours = {-signal.SIGKILL, -signal.SIGTERM, 0}
    input_crashes = [rc for rc in run.exits if rc not in ours]
    tamper = tampering(a.bundle, a.key, results)
    summary = {
        "frames": total, "good_frames": a.frames, "fuzzed_frames": a.fuzz,
        "verdicts_delivered": len(ids), "lost": len(lost), "lost_examples": lost[:10],
        "frames_with_more_than_one_id": len(doubles), "sequence_gaps": len(gaps),
        "gaps_explained_by_quarantine": min(len(gaps), quarantined),
        "unexplained_gaps": max(0, len(gaps) - quarantined), "garbage_verdicts": run.scada.garbage,
        "daemon_exits": run.exits, "input_crashes": len(input_crashes),
        "recovery_s_median": sorted(run.recovery_s)[len(run.recovery_s) // 2] if run.recovery_s else None,
        "recovery_s_max": max(run.recovery_s) if run.recovery_s else None,
        "faults": run.events, "full_disk_tested": run.tmpfs, "tampering": tamper, "command_results": results,
        "wall_s": round(wall, 1), "machine": machine(),
    }
    rows = [["frames (good + fuzzed)", f"{total} ({a.frames} + {a.fuzz})"],
            ["verdicts delivered to SCADA", len(ids)], ["lost", len(lost)],
            ["frames with more than one id", len(doubles)],
            ["sequence gaps (unexplained)", f"{len(gaps)} ({summary['unexplained_gaps']})"],
            ["garbage on the verdict topic", run.scada.garbage],
            ["daemon crashes caused by input", len(input_crashes)],
            ["restarts (kill -9 injected)", f"{len(run.exits) - 1} ({sum(1 for e in run.events if e.startswith('kill'))})"],
            ["recovery s, median / max", f"{summary['recovery_s_median']} / {summary['recovery_s_max']}"],
            ["tampering cases refused", f"{sum(tamper.values())}/{len(tamper)}"],
            ["faults injected", "; ".join(dict.fromkeys(run.events))],
            ["full disk (tmpfs)", "tested" if run.tmpfs else "skipped: not root or no tmpfs"],
            ["wall time s", round(wall, 1)]]
    print(table([{"check": k, "result": v} for k, v in rows], ["check", "result"]))
    save(a.out / "faults.json", summary)
    if a.keep:
        print(f"work folder kept: {work}; broker log in {run.broker.dir}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not lost and not doubles and not summary["unexplained_gaps"] and not input_crashes else 1


def _watch_recovery(run: Run, before: int, t: float) -> None:
    end = t + 120
    while time.monotonic() < end:
        if run.delivered() > before:
            run.recovery_s.append(round(time.monotonic() - t, 2))
            return
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
