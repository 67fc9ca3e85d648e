"""Device bundles: the manifest (typed in edge/contract/manifest.py), its signature (edge/signing.py), integrity
(SHA-256 of every file) and the golden self-test.

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

from edge.backends.base import Backend
from edge.contract import MANIFEST_FILE, BundleManifest, OutputAffine, manifest_from, sha256_file
from edge.errors import BundleError
from edge.signing import Trust

__all__ = ["Bundle", "load_bundle", "self_test"]


@dataclass
class Bundle:
    """A verified bundle folder and its manifest (read once: later changes on disk do not alter it)."""

    root: Path
    manifest: BundleManifest
    digest: str  # hash of the manifest as verified: identifies this exact bundle in verdicts and status
    signed_by: str | None = None

    @property
    def runtime(self) -> str:
        return self.manifest.runtime

    @property
    def artifact(self) -> Path:
        return self.root / self.manifest.artifact

    @property
    def size_px(self) -> int:
        return self.manifest.input.size_px

    @property
    def threshold(self) -> float:
        return self.manifest.threshold

    @property
    def version(self) -> int:
        return self.manifest.bundle_version or 0

    @property
    def affine(self) -> OutputAffine:
        return self.manifest.output_affine

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {"model": m.model.name, "family": m.model.family, "model_version": m.model.version,
                "precision": m.precision, "runtime": m.runtime, "bundle": self.digest,
                "bundle_version": self.version, "signed_by": self.signed_by}


def load_bundle(root: Path, trust: Trust | None = None) -> Bundle:
    """Read the manifest, check its signature (when keys are trusted), schema and every file's SHA-256.

    Raises BundleError (TrustError for signature and rollback refusals) naming the problem and the fix.
    """
    root = Path(root)
    if root.is_file() and root.name.endswith(".tar.gz"):
        raise BundleError(f"{root}: is an archive; unpack it first (tar xzf) or point at the bundle folder")
    mpath = root / MANIFEST_FILE
    if not mpath.is_file():
        raise BundleError(f"{root}: no manifest.json; not a Lineside bundle (build one with edge-deploy)")
    try:
        raw = mpath.read_bytes()
    except OSError as err:
        raise BundleError(f"{mpath}: cannot read: {err.strerror}") from err
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        if trust is not None and trust.enforced:
            trust.verify(root, raw, None)  # names the signature problem first
        raise BundleError(f"{mpath}: manifest is not valid JSON: {err}") from err
    signed_by = None
    if trust is not None and isinstance(doc, dict):
        # the signature covers the bytes, so it is checked before their content is held to the schema (a tampered
        # manifest is named as tampered); the rollback check takes the version those bytes carry
        signed_by = trust.verify(root, raw, doc.get("bundle_version"))
    manifest = manifest_from(doc, mpath)
    for rel, digest in manifest.files.items():
        p = root / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise BundleError(f"{mpath}: file entry '{rel}' leaves the bundle folder")
        if not p.is_file():
            raise BundleError(f"{root}: file '{rel}' listed in the manifest is missing; copy the whole bundle again")
        if sha256_file(p) != digest:
            raise BundleError(f"{root}: file '{rel}' does not match its SHA-256 in the manifest (corrupt or tampered)")
    if manifest.artifact not in manifest.files:
        raise BundleError(f"{mpath}: artifact '{manifest.artifact}' is not among the hashed files")
    if manifest.golden.inputs not in manifest.files:
        raise BundleError(f"{mpath}: golden inputs '{manifest.golden.inputs}' are not among the hashed files")
    return Bundle(root, manifest, hashlib.sha256(raw).hexdigest()[:16], signed_by)


def self_test(bundle: Bundle, backend: Backend) -> dict[str, Any]:
    """Score the golden inputs and compare with the recorded outputs; BundleError if outside tolerance."""
    g = bundle.manifest.golden
    try:
        data = np.load(bundle.root / g.inputs)
    except (OSError, ValueError) as err:
        raise BundleError(f"{bundle.root}: golden inputs unreadable: {err}") from err
    expected = np.asarray(g.scores, dtype=np.float64)
    tol = g.tolerance
    got = []
    for i in range(len(expected)):
        if f"x{i}" not in data:
            raise BundleError(f"{bundle.root}: golden input x{i} missing from {g.inputs}; rebuild the bundle")
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
