"""Device bundles: the manifest, its signature (edge/signing.py), integrity (SHA-256 of every file) and the
golden self-test.

A bundle with a missing file, a changed byte, an unknown file in the manifest or a newer schema is
refused with a message that names it. The self-test scores the golden inputs with the backend the device
will use and compares with the outputs recorded when the bundle was built.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from edge.backends.base import Backend
from edge.contract import CONTRACT_VERSION
from edge.errors import BundleError
from edge.postprocess import OutputAffine
from edge.signing import Trust

__all__ = ["SCHEMA_VERSION", "Bundle", "load_bundle", "sha256_file", "self_test"]

SCHEMA_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _Golden(BaseModel):
    inputs: str
    scores: list[float] = Field(min_length=1)
    tolerance: float = Field(gt=0)


class _ModelInfo(BaseModel):
    name: str
    family: str
    version: str = ""


class _Input(BaseModel):
    size_px: int = Field(gt=0, le=8192)


class _Manifest(BaseModel):
    """The keys the daemon relies on; a manifest without them is refused at load, never mid-run."""

    schema_version: int
    contract_version: int
    runtime: str
    artifact: str
    precision: str
    threshold: float
    input: _Input
    model: _ModelInfo
    golden: _Golden
    files: dict[str, str]
    bundle_version: int | None = None


@dataclass
class Bundle:
    """A verified bundle folder and its manifest (read once: later changes on disk do not alter it)."""

    root: Path
    manifest: dict[str, Any]
    digest: str  # hash of the manifest as verified: identifies this exact bundle in verdicts and status
    signed_by: str | None = None

    @property
    def runtime(self) -> str:
        return str(self.manifest["runtime"])

    @property
    def artifact(self) -> Path:
        return self.root / self.manifest["artifact"]

    @property
    def size_px(self) -> int:
        return int(self.manifest["input"]["size_px"])

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"])

    @property
    def version(self) -> int:
        return int(self.manifest.get("bundle_version") or 0)

    @property
    def affine(self) -> OutputAffine:
        a = self.manifest.get("output_affine") or {}
        return OutputAffine(float(a.get("scale", 1.0)), float(a.get("offset", 0.0)))

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {"model": m["model"]["name"], "family": m["model"]["family"], "model_version": m["model"]["version"],
                "precision": m["precision"], "runtime": m["runtime"], "bundle": self.digest,
                "bundle_version": self.version, "signed_by": self.signed_by}


def load_bundle(root: Path, trust: Trust | None = None) -> Bundle:
    """Read the manifest, check its signature (when keys are trusted), schema and every file's SHA-256.

    Raises BundleError (TrustError for signature and rollback refusals) naming the problem and the fix.
    """
    root = Path(root)
    if root.is_file() and root.name.endswith(".tar.gz"):
        raise BundleError(f"{root}: is an archive; unpack it first (tar xzf) or point at the bundle folder")
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise BundleError(f"{root}: no manifest.json; not a Lineside bundle (build one with edge-deploy)")
    try:
        raw = mpath.read_bytes()
    except OSError as err:
        raise BundleError(f"{mpath}: cannot read: {err.strerror}") from err
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        if trust is not None and trust.enforced:
            trust.verify(root, raw, None)  # names the signature problem first
        raise BundleError(f"{mpath}: manifest is not valid JSON: {err}") from err
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath}: manifest must be a JSON object; rebuild the bundle with edge-deploy")
    signed_by = trust.verify(root, raw, manifest.get("bundle_version")) if trust is not None else None
    schema = manifest.get("schema_version")
    if not isinstance(schema, int):
        raise BundleError(f"{mpath}: schema_version missing; rebuild the bundle with edge-deploy")
    if schema > SCHEMA_VERSION:
        raise BundleError(
            f"{mpath}: schema_version {schema} is newer than this daemon supports ({SCHEMA_VERSION}); "
            "upgrade lineside on the device"
        )
    if manifest.get("contract_version") != CONTRACT_VERSION:
        raise BundleError(f"{mpath}: I/O contract {manifest.get('contract_version')} unsupported (expected {CONTRACT_VERSION})")
    try:
        _Manifest.model_validate(manifest)
    except ValidationError as err:
        e = err.errors()[0]
        raise BundleError(f"{mpath}: {'.'.join(str(x) for x in e['loc'])}: {e['msg']}; rebuild the bundle with "
                          "edge-deploy") from err
    files = manifest["files"]
    for rel, digest in files.items():
        p = root / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise BundleError(f"{mpath}: file entry '{rel}' leaves the bundle folder")
        if not p.is_file():
            raise BundleError(f"{root}: file '{rel}' listed in the manifest is missing; copy the whole bundle again")
        if sha256_file(p) != digest:
            raise BundleError(f"{root}: file '{rel}' does not match its SHA-256 in the manifest (corrupt or tampered)")
    if manifest.get("artifact") not in files:
        raise BundleError(f"{mpath}: artifact '{manifest.get('artifact')}' is not among the hashed files")
    if manifest["golden"]["inputs"] not in files:
        raise BundleError(f"{mpath}: golden inputs '{manifest['golden']['inputs']}' are not among the hashed files")
    return Bundle(root, manifest, hashlib.sha256(raw).hexdigest()[:16], signed_by)


def self_test(bundle: Bundle, backend: Backend) -> dict[str, Any]:
    """Score the golden inputs and compare with the recorded outputs; BundleError if outside tolerance."""
    g = bundle.manifest["golden"]
    try:
        data = np.load(bundle.root / g["inputs"])
    except (OSError, ValueError) as err:
        raise BundleError(f"{bundle.root}: golden inputs unreadable: {err}") from err
    expected = np.asarray(g["scores"], dtype=np.float64)
    tol = float(g["tolerance"])
    got = []
    for i in range(len(expected)):
        if f"x{i}" not in data:
            raise BundleError(f"{bundle.root}: golden input x{i} missing from {g['inputs']}; rebuild the bundle")
        got.append(backend.infer(np.ascontiguousarray(data[f"x{i}"])).score)
    diff = np.abs(np.asarray(got) - expected) / np.maximum(1.0, np.abs(expected))
    worst = float(diff.max())
    if not np.all(np.isfinite(got)) or worst > tol:
        raise BundleError(
            f"{bundle.root}: self-test failed on {backend.info.runtime} {backend.info.device}: golden score "
            f"differs by {worst:.3g} (tolerance {tol:.3g}); the runtime or the model is not what was tested"
        )
    return {"passed": True, "max_rel_diff": worst, "n": len(expected), "runtime": backend.info.runtime,
            "device": backend.info.device, "fallback": backend.info.fallback}
