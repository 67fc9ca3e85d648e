"""Device bundles: the manifest, integrity check (SHA-256 of every file) and the golden self-test.

A bundle with a missing file, a changed byte, an unknown file in the manifest or a newer schema is
refused with a message that names it. The self-test scores the golden inputs with the backend the device
will use and compares with the outputs recorded when the bundle was built.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.backends.base import Backend
from edge.errors import BundleError
from edge.postprocess import OutputAffine

__all__ = ["SCHEMA_VERSION", "CONTRACT_VERSION", "Bundle", "load_bundle", "sha256_file", "self_test", "unpack"]

SCHEMA_VERSION = 1
CONTRACT_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Bundle:
    """A verified bundle folder and its manifest."""

    root: Path
    manifest: dict[str, Any]

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
    def affine(self) -> OutputAffine:
        a = self.manifest.get("output_affine") or {}
        return OutputAffine(float(a.get("scale", 1.0)), float(a.get("offset", 0.0)))

    @property
    def digest(self) -> str:
        """Hash of the manifest: identifies this exact bundle in verdicts and status."""
        return hashlib.sha256((self.root / "manifest.json").read_bytes()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {"model": m["model"]["name"], "family": m["model"]["family"], "version": m["model"]["version"],
                "precision": m["precision"], "runtime": m["runtime"], "bundle": self.digest}


def unpack(archive: Path, dest: Path) -> Path:
    """Extract a bundle .tar.gz safely (no absolute paths or '..') and return the bundle folder."""
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(dest, filter="data")
        tops = {Path(m.name).parts[0] for m in tar.getmembers()}
    if len(tops) != 1:
        raise BundleError(f"{archive}: expected one bundle folder in the archive, found {sorted(tops)}")
    return dest / tops.pop()


def load_bundle(root: Path) -> Bundle:
    """Read the manifest and check schema and every file's SHA-256; raise BundleError naming the problem."""
    root = Path(root)
    if root.is_file() and root.name.endswith(".tar.gz"):
        raise BundleError(f"{root}: is an archive; unpack it first (tar xzf) or point at the bundle folder")
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise BundleError(f"{root}: no manifest.json; not a Lineside bundle (build one with edge-deploy)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{mpath}: manifest is not valid JSON: {err}") from err
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
    files = manifest.get("files") or {}
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
    return Bundle(root, manifest)


def self_test(bundle: Bundle, backend: Backend) -> dict[str, Any]:
    """Score the golden inputs and compare with the recorded outputs; BundleError if outside tolerance."""
    g = bundle.manifest["golden"]
    data = np.load(bundle.root / g["inputs"])
    expected = np.asarray(g["scores"], dtype=np.float64)
    tol = float(g["tolerance"])
    got = []
    for i in range(len(expected)):
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
