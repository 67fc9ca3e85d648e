import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge.backends.tensorrt import EngineKey, engine_cache_path, trtexec_command
from edge.bundle import load_bundle
from edge.errors import BundleError


def _deploy(*args):
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("target", ["cpu", "arm", "intel-npu", "jetson"])
def test_bundles_build_and_verify(tiny_run, tmp_path, target):
    out = tmp_path / f"b-{target}"
    r = _deploy("--target", target, str(tiny_run), "--out", str(out), "--max-drop", "1.0", "--max-far-increase", "1.0")
    assert r.returncode == 0, r.stderr
    assert "next, on the device" in r.stdout and Path(str(out) + ".tar.gz").is_file()
    b = load_bundle(out)
    assert b.manifest.target == target and (out / "lineside.service").is_file()
    v = _deploy("verify", str(out), "--cache-dir", str(tmp_path / "cache"))
    assert v.returncode == 0, v.stderr
    assert "passed" in v.stdout


def test_bundle_refusals(tiny_run, tmp_path):
    out = tmp_path / "b"
    assert _deploy("--target", "arm", str(tiny_run), "--out", str(out), "--max-drop", "1.0", "--max-far-increase", "1.0").returncode == 0
    art = out / load_bundle(out).manifest.artifact
    data = bytearray(art.read_bytes())
    data[len(data) // 2] ^= 0xFF
    art.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="SHA-256"):
        load_bundle(out)
    art.unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(out)
    m = json.loads((out / "manifest.json").read_text())
    m["schema_version"] = 99
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="newer"):
        load_bundle(out)


def test_jetson_refuses_a_top_k_score_tensorrt_cannot_build(tiny_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    meta = json.loads((tiny_run / "model.json").read_text())
    meta["normalisation"].update(score_pool="top", score_k=2000)
    (run / "model.json").write_text(json.dumps(meta))
    r = _deploy("--target", "jetson", str(run), "--out", str(tmp_path / "b"))
    assert r.returncode != 0
    assert "TopK k <= 1024" in r.stderr and "score_top" in r.stderr


def test_unknown_target_lists_valid_ones(tiny_run, tmp_path):
    r = _deploy("--target", "nonsense", str(tiny_run), "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    for t in ("jetson", "intel-npu", "arm", "cpu"):
        assert t in r.stderr


def test_engine_cache_key_and_trtexec_command(tmp_path):
    k = EngineKey("abc", "int8", "10.3.0", "Orin", "8.7")
    p = engine_cache_path(tmp_path, k)
    assert "10.3.0" in str(p) and "sm87" in str(p)
    assert engine_cache_path(tmp_path, EngineKey("abc", "int8", "10.4.0", "Orin", "8.7")) != p  # new TensorRT -> rebuild
    assert engine_cache_path(tmp_path, EngineKey("abc", "int8", "10.3.0", "Orin", "8.7", 0)) != p
    cmd = trtexec_command(Path("m.onnx"), Path("e.engine"), "int8", Path("t.cache"), dla_core=1)
    assert cmd[0] == "trtexec" and "--int8" in cmd and "--useDLACore=1" in cmd and "--allowGPUFallback" in cmd
