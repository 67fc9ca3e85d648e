"""The built wheel, not the source tree (issue 18 item 5): `lineside[ort]` verifies and runs a bundle with no
torch importable, and `lineside[workstation]` builds one, with the systemd unit from the wheel's package data.

Each install is a fresh venv (no system site-packages) holding the lineside wheel, installed with --no-deps;
its dependencies are the closure of the wheel's Requires-Dist for those extras, linked from the test's own
environment into one folder on the venv's path: nothing is downloaded, nothing outside the closure imports.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "lineside.service"
SOURCES = ("pyproject.toml", "README.md", "edge", "training", "quantize", "deploy", "systemd")
EDGE_BUDGET_MB = 400  # issue 18 item 5: lineside, its edge dependencies and onnxruntime


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The lineside wheel, built offline from a copy of the sources (the repo's build/ may be stale)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(p, src / name)
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "-w", str(out), str(src)],
                       check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("lineside-*.whl")
    return whl


def _requires_dist(whl: Path) -> list[str]:
    with zipfile.ZipFile(whl) as z:
        (name,) = (n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(z.read(name).decode()).get_all("Requires-Dist") or []


def _dependencies(own: list[str], extras: set[str]) -> set[str]:
    """Distributions `lineside[extras]` needs, transitively, as found in this environment."""
    names: set[str] = set()
    todo, done = [("lineside", e) for e in extras | {""}], set()
    while todo:
        dist, extra = todo.pop()
        if (dist, extra) in done:
            continue
        done.add((dist, extra))
        for r in map(Requirement, own if dist == "lineside" else metadata.requires(dist) or []):
            if r.marker is not None and not r.marker.evaluate({"extra": extra}):
                continue
            name = canonicalize_name(r.name)
            if name != "lineside":
                names.add(name)
            todo += [(name, e) for e in r.extras | {""}]
    return names


def _link_dependencies(names: set[str], dest: Path) -> None:
    """Symlink each distribution's top-level files (packages, modules, .libs, dist-info) into dest."""
    dest.mkdir()
    for name in names:
        d = metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in d.files or []} - {"..", "__pycache__"}:
            src = Path(str(d.locate_file(top)))
            if src.exists() and not (dest / top).exists():
                (dest / top).symlink_to(src)


def _venv(root: Path, whl: Path, extras: set[str]) -> Path:
    """A fresh venv with the wheel installed and the dependencies of lineside[extras] on its path."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                        "-q", "--no-deps", "--no-index", str(whl)],
                       check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    _link_dependencies(_dependencies(_requires_dist(whl), extras), root / "deps")
    purelib = _python(venv, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root)
    (Path(purelib.stdout.strip()) / "lineside-test-deps.pth").write_text(f"{root / 'deps'}\n")
    return venv


def _run(venv: Path, exe: str, *args: str, cwd: Path,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A console script or the python of venv, away from the source tree: cwd elsewhere, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(venv / "bin" / exe), *args], check=False, capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def _python(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _run(venv, "python", *args, cwd=cwd)


@pytest.fixture(scope="module")
def edge_venv(wheel, tmp_path_factory) -> Path:
    return _venv(tmp_path_factory.mktemp("edge"), wheel, {"ort"})


@pytest.fixture(scope="module")
def workstation_venv(wheel, tmp_path_factory) -> Path:
    return _venv(tmp_path_factory.mktemp("workstation"), wheel, {"workstation"})


def test_wheel_carries_the_systemd_unit(wheel):
    with zipfile.ZipFile(wheel) as z:
        assert z.read("deploy/systemd/lineside.service") == UNIT.read_bytes()


def test_edge_install_has_no_torch_and_finds_the_unit_in_the_wheel(edge_venv, tmp_path):
    r = _python(edge_venv, "-c", "import torch", cwd=tmp_path)
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr, r.stdout + r.stderr
    r = _python(edge_venv, "-c", "import deploy.bundle as b; print(b.__file__); print(b.unit_file())",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    module, unit = map(Path, r.stdout.split())
    assert module.is_relative_to(edge_venv) and unit.is_relative_to(edge_venv), r.stdout
    assert not module.resolve().is_relative_to(REPO) and unit.read_bytes() == UNIT.read_bytes()
    # every Requires-Dist of everything installed is met by the linked closure
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(edge_venv / "bin" / "python"), "check"],
                       check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_edge_install_verifies_and_checks_a_bundle(edge_venv, bundle, tmp_path):
    r = _run(edge_venv, "edge-deploy", "verify", str(bundle), "--cache-dir", str(tmp_path / "cache"),
             cwd=tmp_path)
    assert r.returncode == 0 and "self-test passed on onnxruntime" in r.stdout, r.stdout + r.stderr
    cfg = {"bundle": str(bundle), "state_dir": str(tmp_path / "state"), "cache_dir": str(tmp_path / "cache"),
           "mqtt": {"host": "127.0.0.1", "port": 1}, "metrics": {"enabled": False},
           "stations": [{"name": "s1", "source": {"type": "folder", "path": str(tmp_path)}}]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = _run(edge_venv, "edge-daemon", "--config", str(tmp_path / "config.yaml"), "--check", cwd=tmp_path)
    assert "self-test passed on onnxruntime" in r.stdout, r.stdout + r.stderr
    failed = [line for line in r.stderr.splitlines() if line.startswith("FAILED")]
    # only the broker fails: nothing listens on port 1
    assert len(failed) == 1 and "127.0.0.1:1" in failed[0], r.stderr


def test_edge_install_size_within_budget(edge_venv, tmp_path):
    r = _python(edge_venv, str(REPO / "scripts" / "install_size.py"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    names = {line.split()[1].lower() for line in r.stdout.splitlines()[:-1]}
    assert {"lineside", "onnxruntime"} <= names and "torch" not in names, r.stdout
    total_mb = float(r.stdout.splitlines()[-1].split()[0])
    assert total_mb <= EDGE_BUDGET_MB, r.stdout


def test_workstation_install_builds_a_cpu_bundle(workstation_venv, tiny_run, tmp_path):
    run = tmp_path / "run"
    # without the shared run's INT8 artifacts: this install quantizes them itself
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("quantized"))
    r = _run(workstation_venv, "edge-deploy", "--target", "cpu", str(run), "--out", str(tmp_path / "b"),
             "--max-drop", "1.0", "--max-far-increase", "1.0", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "self-test here: passed" in r.stdout and "next, on the device" in r.stdout, r.stdout[-3000:]
    assert (tmp_path / "b" / "lineside.service").read_bytes() == UNIT.read_bytes()
    assert (tmp_path / "b.tar.gz").is_file()
