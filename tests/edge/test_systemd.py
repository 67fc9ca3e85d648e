"""The real unit file: systemd-analyze verify and security; the daemon run under the unit's seccomp policy."""

import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from edge_helpers import Subscriber, edge_config

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "lineside.service"
LAUNCHER = Path(__file__).with_name("seccomp_launch.py")

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def test_unit_verifies(tmp_path):
    text = UNIT.read_text().replace("/opt/lineside/venv/bin/edge-daemon", shutil.which("true") or "/bin/true")
    unit = tmp_path / "lineside.service"
    unit.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Type=notify" in text and "WatchdogSec=" in text


def test_unit_exposure_is_low():
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
    assert m, r.stdout[-500:]
    assert float(m.group(1)) <= 2.0


# --- the unit's seccomp policy, applied by tests/edge/seccomp_launch.py (no systemd PID 1 here) ---


@pytest.fixture()
def seccomp():
    """The launcher module, once libseccomp is known to load."""
    import seccomp_launch

    try:
        seccomp_launch.load_libseccomp()
    except OSError as err:
        pytest.skip(f"libseccomp.so.2 cannot be loaded ({err}); scripts/setup.sh installs libseccomp2")
    return seccomp_launch


def _old_unit(tmp_path: Path) -> Path:
    """The unit as it was before SystemCallErrorNumber=: systemd's default action, kill with SIGSYS."""
    lines = [ln for ln in UNIT.read_text().splitlines() if not ln.startswith("SystemCallErrorNumber=")]
    p = tmp_path / "old.service"
    p.write_text("\n".join(lines) + "\n")
    return p


def _under(unit: Path, *cmd: str) -> list[str]:
    return [sys.executable, str(LAUNCHER), str(unit), "--", *cmd]


def test_unit_policy_is_parsed_from_the_unit(seccomp):
    pol = seccomp.parse_unit(UNIT.read_text())
    assert pol.is_allow_list and pol.error_number == errno.EPERM
    assert {"read", "openat", "mmap", "socket", "connect", "clone"} <= set(pol.syscalls)
    assert not {"mbind", "sched_setaffinity", "setuid", "mount", "reboot"} & set(pol.syscalls)


def test_launcher_applies_the_filter(seccomp, tmp_path):
    """Denied calls fail with EPERM under the unit and kill under the old one: the launcher is no no-op."""
    probe = "import os; os.sched_setaffinity(0, os.sched_getaffinity(0)); print('allowed')"
    free = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert free.returncode == 0 and "allowed" in free.stdout, free.stderr
    denied = subprocess.run(_under(UNIT, sys.executable, "-c", probe), capture_output=True, text=True)
    assert denied.returncode == 1 and "PermissionError" in denied.stderr, denied.stderr
    old = subprocess.run(_under(_old_unit(tmp_path), sys.executable, "-c", "import numpy"),
                         capture_output=True)
    assert old.returncode == -signal.SIGSYS, old  # numpy's OpenBLAS calls mbind at import


@pytest.mark.integration
@pytest.mark.parametrize("old", [False, True], ids=["unit", "old-kill-filter"])
def test_check_under_unit_seccomp(seccomp, broker, bundle, tmp_path, old):
    cfg = edge_config(tmp_path, bundle, {"port": broker.port})
    unit = _old_unit(tmp_path) if old else UNIT
    r = subprocess.run(_under(unit, sys.executable, "-m", "edge.cli", "--config", str(cfg), "--check"),
                       capture_output=True, text=True, timeout=300)
    if old:
        assert r.returncode == -signal.SIGSYS, r.stdout + r.stderr
    else:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "self-test passed" in r.stdout and f"broker 127.0.0.1:{broker.port} accepted" in r.stdout


@pytest.mark.integration
def test_daemon_scores_under_unit_seccomp(seccomp, broker, bundle, tiny_data, tmp_path):
    """The real daemon, its metrics listener and sd_notify, scoring real frames to mosquitto, filtered."""
    cfg = edge_config(tmp_path, bundle, {"port": broker.port}, metrics={"port": 0})
    frames = sorted((tiny_data / "test").rglob("*.png"))[:4]
    for i, src in enumerate(frames):
        (tmp_path / "inbox" / f"{i:05d}.png").write_bytes(src.read_bytes())
    sock_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    msgs: list[str] = []
    # drained as systemd does: the daemon blocks in sendall once ~10 datagrams (max_dgram_qlen) are unread
    drain = threading.Thread(target=lambda: msgs.extend(iter(lambda: notify.recv(4096).decode(), "")),
                             daemon=True)
    drain.start()
    sub = Subscriber(broker.port)
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "PYTHONUNBUFFERED": "1"}
    cmd = _under(UNIT, sys.executable, "-m", "edge.cli", "--config", str(cfg), "--exit-when-idle", "2")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    sub.wait(len(frames), 10)
    sub.close()
    notify.shutdown(socket.SHUT_RDWR)
    drain.join(5)
    notify.close()
    assert p.returncode == 0, p.stdout + p.stderr
    assert {Path(v["frame"]).name for v in sub.verdicts} == {f"{i:05d}.png" for i in range(len(frames))}
    assert all(v["outcome"] in ("ok", "ng") for v in sub.verdicts), sub.verdicts
    assert any(s.get("state") == "stopped" for s in sub.status)
    assert any("READY=1" in m for m in msgs) and any("STOPPING=1" in m for m in msgs), msgs
