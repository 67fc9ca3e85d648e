"""The typed hand-offs quant.json and manifest.json (edge/contract): a real round trip, old files that today's
readers accept, and one line naming the file, the field and the fix for a malformed, incomplete or newer file.
No training: the files are written here."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.bundle import load_bundle
from edge.contract import (
    MANIFEST_SCHEMA, QUANT_SCHEMA, BundleError, BundleInput, BundleManifest, BundleModelInfo, EdgeError, Golden,
    OutputAffine, QuantResult, read_manifest, read_quant_result, sha256_file,
)
from edge.errors import TrustError
from edge.signing import Trust, generate_key, load_private_key, sign_manifest

# the keys edge-deploy has always written, in its order: the typed model writes the same file
MANIFEST_KEYS = ["schema_version", "contract_version", "bundle_version", "model", "input", "threshold",
                 "output_affine", "normalisation", "precision", "target", "runtime", "min_runtime_version", "artifact",
                 "training_data_fingerprint", "quantization", "golden", "device_requirements", "created",
                 "tool_version", "files"]


def _quant() -> dict:
    """quant.json as edge-quantize writes it (schema 1), figures shortened."""
    return {"schema_version": 1, "runtime": "onnxruntime", "artifact": "model_int8.onnx", "precision": "int8",
            "device": "CPU", "threshold": 0.31, "threshold_fp32": 0.3,
            "threshold_basis": {"n_good_images": 8, "false_alarm_rate_target": 0.005,
                                "false_alarm_resolution": 0.125, "good_images_needed": 200, "warning": "few"},
            "output_affine": {"scale": 1.1, "offset": -0.02},
            "calibration": {"n_images": 8, "source": "training good images"},
            "mixed_precision": {"candidates": [{"method": "minmax", "selection_auroc": 1.0}], "skipped": [],
                                "chosen": {"method": "minmax"}, "rule": "fastest"},
            "gate": {"n_images": 10, "n_defective": 5, "image_auroc_drop": 0.0, "spearman_scores": 0.99,
                     "max_drop": 0.005, "checked": ["image_auroc_drop"], "failed": [], "passed": True},
            "minutes": 0.4,
            "source": {"model_sha256": "a" * 64, "images_sha256": "b" * 64, "settings": {"runtime": "onnxruntime"},
                       "artifact_sha256": "c" * 64}}


def _qfile(tmp_path: Path, body: object) -> Path:
    q = tmp_path / "run" / "quantized" / "onnxruntime" / "quant.json"
    q.parent.mkdir(parents=True, exist_ok=True)
    q.write_text(body if isinstance(body, str) else json.dumps(body))
    return q


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


# --- quant.json -----------------------------------------------------------------------------------------------
def test_quant_json_round_trip_reads_attributes_and_keeps_what_it_does_not_interpret(tmp_path):
    q = read_quant_result(_qfile(tmp_path, _quant()))
    assert isinstance(q, QuantResult) and q.schema_version == QUANT_SCHEMA
    assert q.gate.passed and q.gate.spearman_scores == 0.99 and q.mixed_precision.chosen == {"method": "minmax"}
    assert q.output_affine == OutputAffine(scale=1.1, offset=-0.02) and q.source.model_sha256 == "a" * 64
    assert q.threshold_basis.warning == "few"
    again = tmp_path / "again.json"
    q.write(again)
    # the runtime's search record and the gate's other figures come back as they were written
    assert json.loads(again.read_text()) == _quant()


def test_quant_json_from_before_schema_and_sources_still_reads(tmp_path):
    old = {k: v for k, v in _quant().items() if k not in ("schema_version", "source", "threshold_basis")}
    q = read_quant_result(_qfile(tmp_path, old))
    assert q.schema_version == 1 and q.source is None  # edge-deploy then re-makes it: nothing to compare


@pytest.mark.parametrize("body, expected", [
    ("{not json", "not valid JSON"),
    ([1, 2], "must be a JSON object, got list"),
    ({k: v for k, v in _quant().items() if k != "gate"}, "quant.json: gate: Field required"),
    ({**_quant(), "threshold": "high"}, "quant.json: threshold: Input should be a valid number"),
    ({**_quant(), "thresold": 0.3}, "quant.json: thresold: Extra inputs are not permitted"),
    ({**_quant(), "schema_version": QUANT_SCHEMA + 1}, f"schema_version {QUANT_SCHEMA + 1} is newer than this"),
])
def test_a_quant_json_that_does_not_fit_is_one_line_naming_file_and_fix(tmp_path, body, expected):
    path = _qfile(tmp_path, body)
    with pytest.raises(EdgeError) as err:
        read_quant_result(path)
    msg = _one_line(err)
    assert msg.startswith(str(path)) and expected in msg
    assert f"edge-quantize {tmp_path / 'run'} --runtime onnxruntime" in msg  # the fix


def test_deploy_refuses_a_newer_quant_json_instead_of_overwriting_it(tmp_path):
    """edge-deploy reads quant.json before it decides to reuse or re-make the artifact."""
    from deploy.cli import _quantized

    _qfile(tmp_path, {**_quant(), "schema_version": QUANT_SCHEMA + 1, "new_section": {}})
    with pytest.raises(EdgeError, match="newer than this version reads"):
        _quantized(tmp_path / "run", "onnxruntime", 0.005, "CPU")


# --- manifest.json --------------------------------------------------------------------------------------------
def _bundle(root: Path, **manifest: object) -> Path:
    """A bundle folder with a written manifest (no model needed to read, hash and sign it)."""
    root.mkdir(parents=True)
    (root / "model.onnx").write_bytes(b"not a real model")
    np.savez_compressed(root / "golden.npz", x0=np.zeros((1, 3, 8, 8), np.float32))
    m = BundleManifest(bundle_version=7, model=BundleModelInfo(family="efficientad", name="efficientad-tiny",
                                                               version="2026-12-01"),
                       input=BundleInput(size_px=8), threshold=0.4, precision="fp32", target="cpu",
                       runtime="onnxruntime", artifact="model.onnx",
                       golden=Golden(inputs="golden.npz", scores=[0.1], tolerance=1e-3,
                                     reference_runtime="onnxruntime"),
                       files={p.name: sha256_file(p) for p in sorted(root.iterdir())})
    m.write(root / "manifest.json")
    if manifest:
        _edit(root, **manifest)
    return root


def _edit(root: Path, **changes: object) -> None:
    raw = json.loads((root / "manifest.json").read_text())
    for k, v in changes.items():
        if v is None:
            raw.pop(k, None)
        else:
            raw[k] = v
    (root / "manifest.json").write_text(json.dumps(raw, indent=2))


def test_manifest_round_trip_through_the_loader_with_a_signature(tmp_path):
    b = _bundle(tmp_path / "b")
    raw = (b / "manifest.json").read_bytes()
    assert list(json.loads(raw)) == MANIFEST_KEYS
    key, pub, fp = generate_key(tmp_path / "k")
    sign_manifest(b, load_private_key(key))
    loaded = load_bundle(b, Trust.from_files([pub], tmp_path / "trust.json"))
    assert loaded.signed_by == fp and loaded.version == 7 and loaded.digest == hashlib.sha256(raw).hexdigest()[:16]
    assert loaded.manifest.golden.tolerance == 1e-3 and loaded.size_px == 8 and loaded.threshold == 0.4
    assert loaded.affine == OutputAffine()  # FP32: identity
    assert (b / "manifest.json").read_bytes() == raw  # reading never rewrites what was signed
    assert read_manifest(b) == loaded.manifest


def test_manifest_from_before_versions_and_requirements_still_loads(tmp_path):
    b = _bundle(tmp_path / "b", bundle_version=None, device_requirements=None, output_affine=None,
                quantization=None, target=None, min_runtime_version=None)
    raw = json.loads((b / "manifest.json").read_text())
    raw["golden"].pop("reference_runtime")
    (b / "manifest.json").write_text(json.dumps(raw))
    loaded = load_bundle(b)
    assert loaded.version == 0 and loaded.manifest.golden.reference_runtime is None
    assert loaded.affine == OutputAffine()


@pytest.mark.parametrize("changes, expected", [
    ({"schema_version": MANIFEST_SCHEMA + 1}, "newer than this version reads (1); upgrade lineside on the device"),
    ({"schema_version": None}, "schema_version missing; rebuild the bundle with edge-deploy"),
    ({"contract_version": 2}, "I/O contract 2 is not this version's"),
    ({"runtime": None}, "manifest.json: runtime: Field required (rebuild the bundle with edge-deploy)"),
    ({"input": {"size_px": 0}}, "manifest.json: input.size_px: Input should be greater than 0"),
    ({"golden": {"inputs": "golden.npz", "scores": [], "tolerance": 1e-3}}, "golden.scores: List should have"),
    ({"threshhold": 0.1}, "threshhold: Extra inputs are not permitted"),
])
def test_a_manifest_that_does_not_fit_is_one_line(tmp_path, changes, expected):
    b = _bundle(tmp_path / "b", **changes)
    with pytest.raises(BundleError) as err:
        load_bundle(b)
    msg = _one_line(err)
    assert msg.startswith(str(b / "manifest.json")) and expected in msg


def test_a_tampered_signed_manifest_is_named_as_tampered_before_its_fields(tmp_path):
    b = _bundle(tmp_path / "b")
    key, pub, fp = generate_key(tmp_path / "k")
    sign_manifest(b, load_private_key(key))
    _edit(b, threshold="never")  # would also fail the schema: the signature is what must be named
    with pytest.raises(TrustError, match=f"tampered after signing.*{fp}"):
        load_bundle(b, Trust.from_files([pub], None))


def test_inspect_prints_one_line_for_a_broken_manifest(tmp_path):
    b = _bundle(tmp_path / "b", precision=None)
    r = subprocess.run([sys.executable, "-m", "deploy.cli", "inspect", str(b)], capture_output=True, text=True,
                       timeout=120)
    expected = f"edge-deploy: error: {b / 'manifest.json'}: precision: Field required (rebuild the bundle with edge-deploy)"
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [expected], r.stderr
    shutil.rmtree(b)
    b = _bundle(tmp_path / "b")
    r = subprocess.run([sys.executable, "-m", "deploy.cli", "inspect", str(b)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "efficientad-tiny (efficientad)" in r.stdout, r.stderr


@pytest.mark.parametrize("changes", [{"schema_version": "1"}, {"schema_version": True}, {"contract_version": "1"},
                                     {"contract_version": None}])
def test_versions_must_be_whole_numbers_not_lookalikes(tmp_path, changes):
    """review: "1" was coerced to 1 and a missing contract_version defaulted to this version's."""
    b = _bundle(tmp_path / "b", **changes)
    with pytest.raises(BundleError) as err:
        load_bundle(b)
    assert "version" in _one_line(err) and "rebuild the bundle with edge-deploy" in _one_line(err)


def test_undecodable_bytes_are_a_one_line_error(tmp_path):
    p = tmp_path / "run" / "quantized" / "onnxruntime" / "quant.json"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(EdgeError) as err:
        read_quant_result(p)
    assert "not JSON text" in _one_line(err) and "edge-quantize" in _one_line(err)
