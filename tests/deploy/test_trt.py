"""bench.trt as far as it runs without a GPU: the ONNX graphs a jetson bundle gives TensorRT, the exact trtexec
command, the ONNX Runtime side of the parity, and the refusals. The engine build itself needs TensorRT and an
NVIDIA GPU (scripts/trt_check.sh run) and is not exercised here."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.trt import auroc, onnx_checks
from edge.bundle import load_bundle

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], check=False, capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def jetson_bundles(tiny_run, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("jetson")
    made = {}
    for p in ("int8", "fp16"):
        r = _run("-m", "deploy.cli", "--target", "jetson", str(tiny_run), "--out", str(out / p), "--precision", p,
                 "--max-drop", "1.0", "--max-far-increase", "1.0")
        assert r.returncode == 0, r.stderr
        made[p] = out / p
    return made


def test_dry_run_checks_the_graphs_tensorrt_is_given(jetson_bundles, tiny_data, tmp_path):
    r = _run("-m", "bench.trt", str(jetson_bundles["int8"]), str(jetson_bundles["fp16"]), "--images",
             str(tiny_data / "test"), "--dry-run", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "DRY RUN: TensorRT not run" in r.stdout
    res = json.loads((tmp_path / "trt_dry_run.json").read_text())
    assert res["dry_run"] and res["tensorrt"] is None and "not run" in res["note"]
    rows = {row["precision"]: row for row in res["results"]}
    i8, f16 = rows["int8"], rows["fp16"]
    for row in (i8, f16):
        assert row["onnx"]["problems"] == [] and row["onnx"]["input_shape"] == [1, 3, 64, 64]
        assert row["onnx"]["outputs"] == ["anomaly_map", "score"] and "engine" in row and "not built" in row["engine"]
    # explicit quantization: symmetric int8 Q/DQ only (no int32 bias dequantization TensorRT cannot parse)
    assert i8["onnx"]["qdq_nodes"] > 0 and i8["onnx"]["zero_point_types"] == ["int8"]
    assert i8["artifact"] == "model_int8_qdq.onnx" and "--int8" in i8["trtexec"] and i8["artifact"] in i8["trtexec"]
    assert f16["onnx"]["qdq_nodes"] == 0 and "--fp16" in f16["trtexec"] and "--int8" not in f16["trtexec"]
    # FP16 bundle's graph is the FP32 graph: ONNX Runtime gives it exactly the reference scores
    c = f16["vs_fp32_of_the_onnx_given_to_tensorrt_in_ort"]
    assert c["pearson"] > 0.999999 and c["verdict_flips"] == 0 and c["auroc_drop"] == 0.0
    ci = i8["vs_fp32_of_the_onnx_given_to_tensorrt_in_ort"]
    assert ci["n"] == c["n"] > 4 and ci["threshold_fp32"] == load_bundle(jetson_bundles["fp16"]).threshold


def test_arm_int8_graph_is_flagged_as_not_for_tensorrt(bundle):
    # the ORT CPU graph (asymmetric uint8 activations, int32 biases) is exactly what TensorRT refuses
    c = onnx_checks(load_bundle(bundle).artifact)
    assert c["qdq_nodes"] > 0
    assert any("non-zero zero points" in p for p in c["problems"])
    assert any("needs int8" in p for p in c["problems"])


def test_refusals(bundle, jetson_bundles, tiny_data, tmp_path):
    r = _run("-m", "bench.trt", str(bundle), "--images", str(tiny_data / "test"), "--dry-run", "--out", str(tmp_path))
    assert r.returncode == 2 and "edge-deploy --target jetson" in r.stderr
    if importlib.util.find_spec("tensorrt") is None:
        r = _run("-m", "bench.trt", str(jetson_bundles["int8"]), "--images", str(tiny_data / "test"), "--out",
                 str(tmp_path))
        assert r.returncode == 1 and "tensorrt is not importable" in r.stderr and "--dry-run" in r.stderr


def test_auroc_counts_ties_half():
    assert auroc(np.array([0.1, 0.2, 0.9, 0.8]), np.array([0, 0, 1, 1])) == 1.0
    assert auroc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert auroc(np.array([0.9, 0.1, 0.2]), np.array([0, 1, 1])) == 0.0
    assert auroc(np.array([0.3]), np.array([1])) is None
