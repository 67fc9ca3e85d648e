import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "lineside.service"

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
    assert float(m.group(1)) <= 2.5
