"""ARM bundles run on an aarch64 userland (Debian arm64 under qemu user-mode emulation, scripts/arm_rootfs.sh):
the edge package installed there without torch as the README's "On the device" says, each bundle verified and
self-tested, a folder of frames scored through the real daemon to a broker on the host, and every score and map
compared with the same code on x86.

    bash scripts/arm_rootfs.sh            # once, as root: qemu-user-static, debootstrap arm64, wheels (~4 min)
    python -m bench.arm BUNDLE [BUNDLE...] --images DIR [--cpu max --cpu cortex-a72] [--out bench-out/arm]

The emulated CPU models differ in what INT8 kernels ONNX Runtime dispatches to: `max` has the dot-product, i8mm
and SVE extensions (Neoverse-class cores), `cortex-a72` (Raspberry Pi 4) has plain NEON only. Emulated timings
are not ARM timings, so none are measured or reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.common import machine, save, table

__all__ = ["Userland", "main", "parity"]

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().parent / "arm_probe.py"
DEVICE_VENV = "/opt/lineside/venv"  # where the systemd unit expects the install (deploy.bundle.DEVICE_ROOT)
WORK = "/var/lib/lineside-bench"  # bench files inside the rootfs
CPUS = ("max", "cortex-a72")


class Userland:
    """An aarch64 Debian rootfs entered with chroot; binfmt_misc hands its ELF files to qemu-aarch64-static."""

    def __init__(self, rootfs: Path) -> None:
        self.rootfs = rootfs.resolve()
        stamp = self.rootfs / ".lineside-rootfs"
        if not stamp.is_file():
            raise SystemExit(f"bench.arm: error: no aarch64 userland at {rootfs}: run `bash scripts/arm_rootfs.sh` "
                             "(as root; apt, debootstrap arm64, about 4 minutes the first time)")
        self.stamp = stamp.read_text().strip()

    def path(self, inside: str) -> Path:
        """The host path of a path inside the rootfs."""
        return self.rootfs / inside.lstrip("/")

    def popen(self, argv: list[str], cpu: str, **kw: Any) -> subprocess.Popen:
        """Start argv inside the rootfs on the emulated CPU model `cpu`.

        Only /proc is mounted, in a private mount namespace that vanishes with the process (nothing to unmount
        after a crash). /sys stays out on purpose: qemu 7.2 shows aarch64 guests the host's x86 /proc/cpuinfo,
        and pytorch-cpuinfo (inside ONNX Runtime) segfaults parsing it when /sys is there too; without /sys it
        fails cleanly and ONNX Runtime reads the CPU features from AT_HWCAP, as on a board without cpuinfo data.
        """
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "LC_ALL": "C.UTF-8", "QEMU_CPU": cpu}  # a clean environment: no host venv or PYTHONPATH leaks in
        script = 'r=$1; shift; mount --bind /proc "$r/proc"; exec chroot "$r" "$@"'
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script, "sh", str(self.rootfs), *argv]
        return subprocess.Popen(cmd, env=env, text=True, **kw)

    def run(self, argv: list[str], cpu: str = "max", timeout_s: float = 1800) -> subprocess.CompletedProcess:
        p = self.popen(argv, cpu, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        return subprocess.CompletedProcess(argv, p.returncode, out, err)

    def check(self, argv: list[str], cpu: str = "max", timeout_s: float = 1800) -> str:
        r = self.run(argv, cpu, timeout_s)
        if r.returncode != 0:
            raise RuntimeError(f"aarch64 ({cpu}): {' '.join(argv)} exited {r.returncode}:\n{r.stdout[-3000:]}"
                               f"\n{r.stderr[-3000:]}")
        return r.stdout


def install_edge(u: Userland, wheels: Path) -> dict[str, Any]:
    """Build this working tree's wheel on the host and install `lineside[ort]` into a fresh device venv.

    Offline from the wheel folder arm_rootfs.sh filled: pip resolves the same requirements it would from PyPI.
    """
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp,
                        str(REPO)], check=True, capture_output=True)
        own = next(Path(tmp).glob("lineside-*.whl"))
        dest = u.path("/opt/lineside-wheels")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(wheels, dest)
        shutil.copy2(own, dest / own.name)
    shutil.rmtree(u.path(DEVICE_VENV), ignore_errors=True)
    u.check(["python3", "-m", "venv", DEVICE_VENV])
    u.check([f"{DEVICE_VENV}/bin/pip", "install", "-q", "--no-index", "--find-links", "/opt/lineside-wheels",
             "lineside[ort]"])
    freeze = u.check([f"{DEVICE_VENV}/bin/pip", "freeze"]).split()
    arch = u.check([f"{DEVICE_VENV}/bin/python", "-c", "import platform; print(platform.machine())"]).strip()
    has_torch = any(line.lower().startswith("torch") for line in freeze)
    if has_torch:
        raise RuntimeError("the edge install pulled in torch: " + ", ".join(freeze))
    return {"command": f"{DEVICE_VENV}/bin/pip install 'lineside[ort]' (offline, aarch64 wheels)", "machine": arch,
            "packages": freeze, "torch_installed": has_torch}


def _load(npz: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(npz.with_suffix(".json").read_text())


def parity(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], threshold: float) -> dict[str, Any]:
    """ARM-vs-x86 differences of scores and maps, and the verdicts that flip, over the same named inputs."""
    if list(ref["names"]) != list(got["names"]):
        raise RuntimeError("x86 and aarch64 scored different inputs")
    s0, s1 = ref["scores"], got["scores"]
    ds = np.abs(s1 - s0)
    m0, m1 = ref["maps"].astype(np.float64), got["maps"].astype(np.float64)
    dm = np.abs(m1 - m0).reshape(len(m0), -1).max(axis=1)
    span = np.abs(m0).reshape(len(m0), -1).max(axis=1)
    flips = [str(n) for n, a, b in zip(ref["names"], ref["outcomes"], got["outcomes"]) if a != b]
    return {
        "n": len(s0),
        "score_abs_max": float(ds.max()),
        "score_rel_max": float((ds / np.maximum(np.abs(s0), 1e-9)).max()),
        "score_diff_over_threshold_max": float(ds.max() / abs(threshold)) if threshold else None,
        "map_abs_max": float(dm.max()),
        "map_rel_max": float((dm / np.maximum(span, 1e-9)).max()),  # per image: max |diff| / max |x86 map|
        "verdict_flips": len(flips),
        "flipped": flips,
        "closest_to_threshold": float(np.abs(s0 - threshold).min()),  # a flip needs a diff at least this big
    }


def _daemon(u: Userland, cpu: str, bundle_in: str, frames: Path, tag: str, port: int,
            timeout_s: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str, int]:
    """Run edge-daemon inside the rootfs on a copy of the frames; returns verdicts, statuses, log, exit code."""
    import paho.mqtt.client as mqtt

    base = f"{WORK}/daemon-{tag}"
    shutil.rmtree(u.path(base), ignore_errors=True)
    inbox = u.path(f"{base}/inbox")
    inbox.mkdir(parents=True)
    for p in sorted(q for q in frames.rglob("*") if q.is_file()):
        shutil.copy2(p, inbox / str(p.relative_to(frames)).replace("/", "--"))
    line = f"arm-{tag}".replace(".", "_")
    cfg = {"bundle": bundle_in, "state_dir": f"{base}/state", "cache_dir": f"{base}/cache",
           "backend": {"device": "cpu"}, "metrics": {"enabled": False},
           "mqtt": {"host": "127.0.0.1", "port": port, "line": line, "reconnect_min_s": 0.5, "reconnect_max_s": 1},
           "stations": [{"name": "s1", "source": {"type": "folder", "path": f"{base}/inbox"}}]}
    u.path(f"{base}/config.yaml").write_text(yaml.safe_dump(cfg))
    verdicts: list[dict[str, Any]] = []
    statuses: list[dict[str, Any]] = []

    def on_msg(c: mqtt.Client, ud: Any, m: mqtt.MQTTMessage) -> None:
        (verdicts if m.topic.endswith("/verdict") else statuses).append(json.loads(m.payload))

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-arm-{tag}-{time.time_ns()}")
    sub.on_connect = lambda c, *_: c.subscribe(f"lineside/{line}/#", qos=1)
    sub.on_message = on_msg
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    try:
        # the daemon's own idle stop: every frame is in the inbox before it starts
        p = u.popen([f"{DEVICE_VENV}/bin/edge-daemon", "--config", f"{base}/config.yaml", "--exit-when-idle", "10"],
                    cpu, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            log, _ = p.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            log, _ = p.communicate()
            log += f"\n[bench.arm: daemon killed after {timeout_s} s]"
        time.sleep(1.0)  # the last QoS 1 messages reach the subscriber
    finally:
        sub.loop_stop()
        sub.disconnect()
    return verdicts, statuses, log or "", p.returncode


def _daemon_check(verdicts: list[dict[str, Any]], statuses: list[dict[str, Any]], arm: dict[str, np.ndarray],
                  x86: dict[str, np.ndarray], rc: int) -> dict[str, Any]:
    """Every frame got one verdict over MQTT, with the outcome and score the aarch64 probe computed."""
    names = [str(n) for n in arm["names"]]
    by_frame = {Path(v["frame"]).name: v for v in verdicts}
    expected = {n.replace("/", "--"): i for i, n in enumerate(names) if not n.startswith("golden:")}
    missing = sorted(set(expected) - set(by_frame))
    mismatched, diffs, flips = [], [], []
    for f, i in expected.items():
        v = by_frame.get(f)
        if v is None:
            continue
        if v["outcome"] != str(arm["outcomes"][i]) or v["score"] is None:
            mismatched.append(f)
            continue
        diffs.append(abs(float(v["score"]) - float(arm["scores"][i])))
        if v["outcome"] != str(x86["outcomes"][i]):
            flips.append(f)
    states = [s.get("state") for s in statuses]
    return {"frames": len(expected), "verdicts": len({v["id"] for v in verdicts}), "missing": missing,
            "mismatched_vs_probe": mismatched,
            "score_abs_max_vs_probe": max(diffs) if diffs else None,  # verdict scores are rounded to 6 places
            "verdict_flips_vs_x86": len(flips), "status_states": sorted({str(s) for s in states}),
            "exit_code": rc}


def run_bundle(u: Userland, bundle: Path, frames: Path, cpus: list[str], port: int, tmp: Path,
               timeout_s: float, emit: Callable[[dict[str, Any]], None]) -> None:
    """Every check for one bundle on each emulated CPU model; emit() gets each result row as it is done."""
    name = bundle.resolve().name
    bundle_in = f"/opt/lineside/bundles/{name}"
    shutil.rmtree(u.path(bundle_in), ignore_errors=True)
    shutil.copytree(bundle, u.path(bundle_in))  # what `scp` + unpack does on a real device
    frames_in = f"{WORK}/frames"
    shutil.rmtree(u.path(frames_in), ignore_errors=True)
    shutil.copytree(frames, u.path(frames_in))
    shutil.copy2(PROBE, u.path(f"{WORK}/arm_probe.py"))
    x86_npz = tmp / f"{name}-x86.npz"
    subprocess.run([sys.executable, str(PROBE), str(bundle), str(frames), str(x86_npz)], check=True, cwd=tmp)
    x86, x86_info = _load(x86_npz)
    for cpu in cpus:
        tag = f"{name}-{cpu}"
        # the device's own acceptance check (hashes, load, golden self-test): its verdict is recorded either way
        verify = u.run([f"{DEVICE_VENV}/bin/edge-deploy", "verify", bundle_in, "--cache-dir", f"{WORK}/cache"], cpu)
        out_in = f"{WORK}/{tag}.npz"
        u.check([f"{DEVICE_VENV}/bin/python", f"{WORK}/arm_probe.py", bundle_in, frames_in, out_in], cpu)
        arm, arm_info = _load(u.path(out_in))
        par = parity(x86, arm, x86_info["threshold"])
        verdicts, statuses, log, rc = _daemon(u, cpu, bundle_in, frames, tag, port, timeout_s)
        d = _daemon_check(verdicts, statuses, arm, x86, rc)
        ok = (verify.returncode == 0 and arm_info["selftest"]["passed"] and arm_info["machine"] == "aarch64"
              and not arm_info["torch_importable"] and par["verdict_flips"] == 0 and not d["missing"]
              and not d["mismatched_vs_probe"] and rc == 0)
        emit({"bundle": name, "precision": arm_info["precision"], "cpu": cpu, "machine": arm_info["machine"],
                     "hwcaps": arm_info["hwcaps"], "runtime": f"{arm_info['runtime']} {arm_info['runtime_version']}",
                     "x86_runtime": f"{x86_info['runtime']} {x86_info['runtime_version']}",
                     "verify": {"exit_code": verify.returncode,
                                "output": (verify.stdout + verify.stderr).strip().splitlines()[-3:]},
                     "selftest": arm_info["selftest"],
                     "torch_importable": arm_info["torch_importable"], "golden_tolerance": arm_info["golden_tolerance"],
                     "parity": par, "daemon": d, "passed": ok,
                     **({} if ok else {"daemon_log_tail": log[-4000:]})})
        print(f"{tag}: {'ok' if ok else 'FAILED'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import Mosquitto, mosquitto_exe  # the same real broker the tests use

    ap = argparse.ArgumentParser(prog="python -m bench.arm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", type=Path, nargs="+", metavar="BUNDLE", help="bundle folders (edge-deploy --target arm)")
    ap.add_argument("--images", type=Path, required=True, help="folder of frames (searched recursively)")
    ap.add_argument("--cpu", action="append", choices=["max", "cortex-a72", "cortex-a76", "cortex-a53", "neoverse-n1"],
                    help=f"emulated CPU model, repeatable (default: {' '.join(CPUS)})")
    ap.add_argument("--rootfs", type=Path, default=REPO / "build/arm64/rootfs")
    ap.add_argument("--wheels", type=Path, default=REPO / "build/arm64/wheels")
    ap.add_argument("--daemon-timeout-s", type=float, default=1800)
    ap.add_argument("--out", type=Path, default=Path("bench-out/arm"))
    a = ap.parse_args(argv)
    for b in a.bundles:
        if not (b / "manifest.json").is_file():
            ap.error(f"{b}: no manifest.json; build one with `edge-deploy --target arm RUN --out {b}`")
    if not a.images.is_dir():
        ap.error(f"--images {a.images}: not a folder")
    if mosquitto_exe() is None:
        ap.error("mosquitto is not installed (scripts/setup.sh installs it): the daemon needs a broker on the host")
    u = Userland(a.rootfs)
    cpus = a.cpu or list(CPUS)
    started = dt.datetime.now(dt.timezone.utc)
    install = install_edge(u, a.wheels)
    broker = Mosquitto()
    broker.start()
    qemu = subprocess.run(["qemu-aarch64-static", "--version"], check=False, capture_output=True,
                          text=True).stdout.splitlines()
    payload = {"bench": "arm", "date": started.isoformat(timespec="seconds"), "host": machine(),
               "emulator": qemu[0] if qemu else None, "userland": u.stamp, "edge_install": install,
               "images": str(a.images), "timings": "none: emulated timings are not ARM timings", "results": []}
    rows: list[dict[str, Any]] = payload["results"]
    out = a.out / "arm.json"

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        save(out, payload)  # after every row: an emulated run takes long, a stopped one keeps what it measured

    try:
        with tempfile.TemporaryDirectory() as tmp:
            for b in a.bundles:
                run_bundle(u, b, a.images, cpus, broker.port, Path(tmp), a.daemon_timeout_s, emit)
    finally:
        broker.stop()
    save(out, payload)
    cols = ["bundle", "precision", "cpu", "selftest", "score_abs", "score_rel", "map_abs", "map_rel", "flips",
            "daemon", "passed"]
    flat = [{"bundle": r["bundle"], "precision": r["precision"], "cpu": r["cpu"],
             "selftest": f"{'ok' if r['selftest']['passed'] else 'FAIL'} {r['selftest']['golden_max_rel_diff']:.1e}"
                         f"/{r['golden_tolerance']:.0e}",
             "score_abs": f"{r['parity']['score_abs_max']:.2e}", "score_rel": f"{r['parity']['score_rel_max']:.2e}",
             "map_abs": f"{r['parity']['map_abs_max']:.2e}", "map_rel": f"{r['parity']['map_rel_max']:.2e}",
             "flips": f"{r['parity']['verdict_flips']}/{r['parity']['n']}",
             "daemon": f"{r['daemon']['verdicts']}/{r['daemon']['frames']}", "passed": r["passed"]} for r in rows]
    print(f"aarch64 ({payload['emulator']}) vs x86 ({payload['host']['cpu']}); {install['machine']} edge install "
          f"without torch; no timings (emulated)")
    print(table(flat, cols))
    print(f"wrote {out}")
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
