"""Intel NPU bundles, checked without an NPU: the bundle carries static shapes, the blob cache layout keyed by
runtime, device and driver version, and the CPU fallback; a forced fallback (no NPU on this machine) runs on the
CPU and the daemon announces it as `degraded` on the status topic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from edge_helpers import Subscriber, edge_config, start_daemon, stop_daemon, wait_for

from edge.backends.openvino import CACHE_LAYOUT, OpenVinoBackend, cache_dir_for, static_io
from edge.bundle import load_bundle
from edge.errors import BundleError

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def npu_bundle(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("npu") / "b"
    r = subprocess.run([sys.executable, "-m", "deploy.cli", "--target", "intel-npu", str(tiny_run), "--out", str(out),
                        "--max-drop", "1.0", "--max-far-increase", "1.0"], check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def test_bundle_carries_what_the_npu_needs(npu_bundle):
    b = load_bundle(npu_bundle)
    req = b.manifest.device_requirements
    assert req["device"] == "NPU"
    # the shapes recorded are the artifact's own, and all static
    assert static_io(b.artifact) == req["static_shapes"]
    assert req["static_shapes"]["image"] == [1, 3, 64, 64] and req["static_shapes"]["anomaly_map"] == [1, 1, 64, 64]
    assert req["compiled_blob_cache"]["layout"].endswith(CACHE_LAYOUT)
    for key in ("{runtime_version}", "{device}", "{driver_version}"):
        assert key in req["compiled_blob_cache"]["layout"]
    assert req["fallback"]["device"] == "CPU" and "degraded" in req["fallback"]["reported"]
    assert b.manifest.precision == "int8" and b.artifact.suffix == ".xml"
    r = subprocess.run([sys.executable, "-m", "deploy.cli", "inspect", str(npu_bundle)], check=False,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "static" in r.stdout and "driver" in r.stdout, r.stdout + r.stderr


def test_blob_cache_is_keyed_by_runtime_device_and_driver(tmp_path):
    a = cache_dir_for(tmp_path, "2026.4.1-22982", "NPU", "1688")
    assert a == tmp_path / "openvino" / "2026.4.1-22982" / "NPU-driver-1688"
    assert cache_dir_for(tmp_path, "2026.4.1-22982", "NPU", "1712") != a  # driver update: recompile
    assert cache_dir_for(tmp_path, "2026.5.0", "NPU", "1688") != a  # runtime update: recompile
    assert cache_dir_for(tmp_path, "2026.4.1-22982", "CPU", "none") != a
    assert "/" not in cache_dir_for(tmp_path, "x/../y", "NPU", "a b").name  # reported strings cannot escape


def test_forced_fallback_runs_on_cpu_says_so_and_caches_per_key(npu_bundle, tmp_path):
    import openvino as ov

    if any(d.startswith("NPU") for d in ov.Core().available_devices):
        pytest.skip("an NPU is present: the fallback cannot be forced here")
    b = load_bundle(npu_bundle)
    cache = tmp_path / "cache"
    be = OpenVinoBackend(b.artifact, "npu", cache)
    assert be.info.device == "CPU" and be.info.fallback and "NPU not present" in be.info.fallback
    blobs = Path(be.info.extra["blob_cache"])
    assert blobs == cache_dir_for(cache, ov.get_version(), "CPU", "none")
    first = sorted(p.name for p in blobs.iterdir())
    assert first, "OpenVINO wrote no compiled blob"
    be.close()
    again = OpenVinoBackend(b.artifact, "npu", cache)
    assert sorted(p.name for p in Path(again.info.extra["blob_cache"]).iterdir()) == first  # reused, not added to


def test_dynamic_shapes_are_refused_for_the_npu(tiny_run, tmp_path):
    import onnx

    m = onnx.load(str(tiny_run / "model.onnx"))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    p = tmp_path / "dynamic.onnx"
    onnx.save(m, str(p))
    with pytest.raises(BundleError, match="dynamic shape"):
        OpenVinoBackend.bundle_requirements(p, 64, "npu")
    assert OpenVinoBackend.bundle_requirements(p, 64, "cpu") is None  # only the NPU needs them static


@pytest.mark.integration
def test_daemon_announces_the_cpu_fallback_as_degraded(npu_bundle, broker, tmp_path):
    import openvino as ov

    if any(d.startswith("NPU") for d in ov.Core().available_devices):
        pytest.skip("an NPU is present: the fallback cannot be forced here")
    cfg = edge_config(tmp_path, npu_bundle, {"port": broker.port})
    cfg.write_text(cfg.read_text() + "backend:\n  device: npu\n")
    sub = Subscriber(broker.port)
    p = start_daemon(cfg)
    try:
        assert wait_for(lambda: any(s.get("state") == "degraded" for s in sub.status), 90), sub.status
    finally:
        log = stop_daemon(p)
        sub.close()
    st = next(s for s in sub.status if s.get("state") == "degraded")
    assert st["backend"]["device"] == "CPU" and "NPU not present" in st["backend"]["fallback"]
    assert any("backend fallback" in x and "NPU" in x for x in st["problems"]), st["problems"]
    assert not any(s.get("state") == "online" for s in sub.status)  # never announced as healthy
    assert "NPU not present" in log
