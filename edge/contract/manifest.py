"""manifest.json: what a bundle is (model, input, threshold, runtime, artifact, golden self-test data) and the
SHA-256 of every file in it. Written by edge-deploy, signed byte for byte (edge/signing.py), read by the daemon
and by `edge-deploy verify|inspect|build-engine`. Readers take the bytes as written: nothing here re-serialises
a manifest that was read, so a signature over it still holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge.contract.document import read_document
from edge.contract.handoff import validate_handoff
from edge.contract.io import CONTRACT_VERSION, OutputAffine
from edge.contract.quant import QuantCalibration, QuantGate
from edge.errors import BundleError

__all__ = ["MANIFEST_SCHEMA", "MANIFEST_FILE", "BundleManifest", "BundleModelInfo", "BundleInput", "Golden",
           "BundleQuantization", "manifest_from", "read_manifest"]

MANIFEST_SCHEMA = 1
MANIFEST_FILE = "manifest.json"
_REBUILD = "rebuild the bundle with edge-deploy"
_UPGRADE = "upgrade lineside on the device"


class BundleModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: str
    name: str
    variant: str | None = None
    version: str = Field("", description="when the model was exported")


class BundleInput(BaseModel):
    """The input of the I/O contract the artifact was built for."""

    model_config = ConfigDict(extra="forbid")
    size_px: int = Field(gt=0, le=8192)
    colour_order: Literal["RGB"] = "RGB"
    range: list[int | float] = Field(default_factory=lambda: [0, 1])
    layout: Literal["NCHW"] = "NCHW"
    resize: Literal["bilinear"] = "bilinear"


class Golden(BaseModel):
    """Golden inputs and the scores the bundle's graph gave when it was built: the device's self-test."""

    model_config = ConfigDict(extra="forbid")
    inputs: str = Field(description="npz of the inputs x0, x1, ... (a hashed file of the bundle)")
    scores: list[float] = Field(min_length=1)
    tolerance: float = Field(gt=0, description="largest relative score difference the self-test accepts")
    reference_runtime: str | None = Field(None, description="runtime the scores were recorded in (None: the "
                                          "bundle's own)")


class BundleQuantization(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gate: QuantGate | None = None
    calibration: QuantCalibration | None = None


class BundleManifest(BaseModel):
    """A bundle's manifest.json (fields in the order they are written)."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = MANIFEST_SCHEMA  # a manifest must record it: refused without
    contract_version: int = CONTRACT_VERSION
    bundle_version: int | None = Field(None, description="only goes up; a signed bundle must have one")
    model: BundleModelInfo
    input: BundleInput
    threshold: float
    output_affine: OutputAffine = Field(default_factory=OutputAffine)
    # the training normalisation, baked into the graph: recorded for audit, never applied on the device
    normalisation: dict[str, Any] | None = None
    precision: str
    target: str | None = None
    runtime: str
    min_runtime_version: str | None = None
    artifact: str = Field(description="the model file the runtime loads (a hashed file of the bundle)")
    training_data_fingerprint: str | None = None
    quantization: BundleQuantization | None = None
    golden: Golden
    # what the runtime's backend requires of the device (Backend.bundle_requirements): its own keys, kept as is
    device_requirements: dict[str, Any] | None = None
    created: str | None = None
    tool_version: str | None = None
    files: dict[str, str] = Field(description="SHA-256 of every file of the bundle but the manifest and its "
                                  "signature, by path")

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.model_dump(), indent=2))


def manifest_from(raw: Any, path: Path) -> BundleManifest:
    """A parsed manifest.json, validated; BundleError names the file, the field and the fix."""
    if isinstance(raw, dict):  # a manifest states both versions: one that does not is not trusted
        for key in ("schema_version", "contract_version"):
            if key not in raw:
                raise BundleError(f"{path}: {key} missing; {_REBUILD}")
    return validate_handoff(BundleManifest, raw, path, MANIFEST_SCHEMA, BundleError, _REBUILD, _UPGRADE)


def read_manifest(root: Path) -> BundleManifest:
    """A bundle folder's manifest, validated but neither hash- nor signature-checked (edge.bundle.load_bundle
    checks both before the daemon uses a bundle)."""
    path = Path(root) / MANIFEST_FILE
    return manifest_from(read_document(path, "json", BundleError, "bundle manifest", _REBUILD), path)
