"""quant.json: what `edge-quantize` made for one runtime (the INT8 artifact, its recalibrated threshold and
output affine, the gate's verdict and what it was made from), read by edge-deploy to reuse or re-make it and to
write the bundle. The runtime's search record and the gate's figures are kept, but only the parts named here are
interpreted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edge.contract.document import read_document
from edge.contract.handoff import ThresholdBasis, validate_handoff
from edge.contract.io import OutputAffine
from edge.errors import EdgeError

__all__ = ["QUANT_SCHEMA", "QuantResult", "QuantSource", "QuantGate", "QuantCalibration", "MixedPrecision",
           "read_quant_result"]

QUANT_SCHEMA = 1  # files written before it was recorded read as 1


class QuantSource(BaseModel):
    """What the artifact was made from: edge-deploy reuses it only while all of this still matches."""

    model_config = ConfigDict(extra="forbid")
    model_sha256: str = Field(description="SHA-256 of the run's model.onnx")
    images_sha256: str = Field(description="fingerprint of the calibration and gate images")
    # the quantizer adds its own settings (a runtime's column): compared as a whole, not interpreted here
    settings: dict[str, Any]
    artifact_sha256: str | None = Field(None, description="the artifact's SHA-256 (None: not made yet)")


class QuantGate(BaseModel):
    """The FP32-vs-INT8 accuracy gate (quantize.gate.gate_report); its other figures are kept as they are."""

    model_config = ConfigDict(extra="allow")
    passed: bool
    failed: list[str] = Field(default_factory=list, description="the checks that did not hold")
    image_auroc_drop: float
    spearman_scores: float


class QuantCalibration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_images: int = Field(ge=0)
    source: str = Field(description="folder of the calibration images, or 'training good images'")


class MixedPrecision(BaseModel):
    """The candidate search: the settings chosen (the runtime's own keys) and the measured record."""

    # the runtime's search record (candidates, skipped, sensitivity, rule): kept for audit, not interpreted
    model_config = ConfigDict(extra="allow")
    chosen: dict[str, Any]
    candidates: list[dict[str, Any]] = Field(default_factory=list)


class QuantResult(BaseModel):
    """quant.json, written by `edge-quantize RUN --runtime NAME` into RUN/quantized/NAME/."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = QUANT_SCHEMA
    runtime: str
    artifact: str = Field(description="file name of the INT8 artifact, beside quant.json")
    precision: str = "int8"
    device: str
    threshold: float = Field(description="the bundle's threshold, recalibrated for the INT8 artifact")
    threshold_fp32: float
    threshold_basis: ThresholdBasis | None = None  # None: written before it was recorded
    output_affine: OutputAffine
    calibration: QuantCalibration
    mixed_precision: MixedPrecision
    gate: QuantGate
    minutes: float
    source: QuantSource | None = None  # None: written before sources were recorded (never reused)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.model_dump(), indent=2))


def read_quant_result(path: Path) -> QuantResult:
    """A quant.json, validated; EdgeError names the file, the field and the fix (quantize the run again)."""
    path = Path(path)
    run, runtime = path.parent.parent.parent, path.parent.name
    fix = f"quantize again with `edge-quantize {run} --runtime {runtime}`"
    raw = read_document(path, "json", EdgeError, "quantization result", fix)
    return validate_handoff(QuantResult, raw, path, QUANT_SCHEMA, EdgeError, fix,
                            f"upgrade lineside, or {fix} to replace it")
