"""ARM bundles on a real aarch64 userland (Debian arm64 under qemu user-mode emulation): `python -m bench.arm`
installs the edge package there without torch, verifies and self-tests FP32 and INT8 bundles, scores frames
through the real daemon to a broker on the host and compares with x86.

The first run builds the userland (scripts/arm_rootfs.sh, about 4 minutes, cached under build/arm64/); the test
is skipped only when the emulator cannot be installed or registered on this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import mosquitto_exe

REPO = Path(__file__).resolve().parents[2]
ARM_DIR = REPO / os.environ.get("ARM_DIR", "build/arm64")  # where scripts/arm_rootfs.sh caches the userland

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def userland() -> Path:
    r = subprocess.run(["bash", str(REPO / "scripts/arm_rootfs.sh")], check=False, capture_output=True, text=True,
                       cwd=REPO)
    if r.returncode == 3:
        pytest.skip(f"aarch64 emulator cannot be installed here: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, f"scripts/arm_rootfs.sh failed:\n{r.stderr[-3000:]}"
    return ARM_DIR / "rootfs"


def test_arm_bundles_run_on_aarch64(userland, tiny_run, tiny_data, bundle, tmp_path):
    if mosquitto_exe() is None:
        pytest.skip("mosquitto not installed (scripts/setup.sh installs it)")
    fp32 = tmp_path / "b-fp32"
    r = subprocess.run([sys.executable, "-m", "deploy.cli", "--target", "arm", str(tiny_run), "--out", str(fp32),
                        "--precision", "fp32"], check=False, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    frames = tmp_path / "frames"  # two per class: emulated inference is slow, and CI time is shared
    for d in sorted(p for p in (tiny_data / "test").iterdir() if p.is_dir()):
        (frames / d.name).mkdir(parents=True)
        for f in sorted(d.glob("*.png"))[:2]:
            shutil.copy2(f, frames / d.name / f.name)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "bench.arm", str(bundle), str(fp32), "--images", str(frames),
                        "--cpu", "max", "--rootfs", str(userland), "--wheels", str(ARM_DIR / "wheels"), "--out",
                        str(out)], check=False, capture_output=True, text=True, cwd=REPO, timeout=1500)
    res = json.loads((out / "arm.json").read_text())
    assert "| bundle" in r.stdout, r.stdout + r.stderr
    install = res["edge_install"]
    assert install["machine"] == "aarch64" and not install["torch_installed"]
    assert any(p.startswith("onnxruntime==") for p in install["packages"])
    rows = {row["precision"]: row for row in res["results"]}
    assert set(rows) == {"int8", "fp32"}
    for row in rows.values():
        assert row["machine"] == "aarch64" and row["hwcaps"]["asimd"] and not row["torch_importable"]
        # the device's own check agrees with the golden difference the probe measured
        within = row["selftest"]["golden_max_rel_diff"] <= row["golden_tolerance"]
        assert row["selftest"]["passed"] == within == (row["verify"]["exit_code"] == 0), row["verify"]
        d = row["daemon"]
        if row["selftest"]["passed"]:
            # every frame reached the host broker with the aarch64 probe's outcome and score
            assert d["exit_code"] == 0 and not d["missing"] and not d["mismatched_vs_probe"], d
            assert d["verdicts"] == d["frames"] > 0 and d["score_abs_max_vs_probe"] < 1e-5
        else:
            # a bundle that fails its self-test on this CPU is refused: no verdict from an untested model
            assert d["exit_code"] != 0 and d["verdicts"] == 0, d
    f = rows["fp32"]
    assert f["selftest"]["passed"] and f["passed"], r.stdout + r.stderr
    assert f["parity"]["verdict_flips"] == 0 and f["parity"]["score_rel_max"] < 1e-4 and f["parity"]["map_abs_max"] < 1e-4
    assert r.returncode == (0 if all(row["passed"] for row in rows.values()) else 1)
