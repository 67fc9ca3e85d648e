"""Typed hand-off files. `model.json` (the model card) is written by training's export and read by quantize and
deploy; quant.json (contract/quant.py) and the bundle's manifest.json (contract/manifest.py) follow the same
rules: fields are read as attributes, never by string key, and a file that does not fit says which field."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.contract.document import field_problem, read_document
from edge.contract.io import CONTRACT_VERSION
from edge.errors import EdgeError

__all__ = ["ModelCard", "Normalisation", "ThresholdBasis", "read_model_card", "MODEL_CARD_SCHEMA", "validate_handoff",
           "sha256_file"]

MODEL_CARD_SCHEMA = 1

M = TypeVar("M", bound=BaseModel)


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes (what the manifest records for every bundle file)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def validate_handoff(model: type[M], raw: Any, path: Path, schema: int, error: type[EdgeError], fix: str,
                     upgrade: str) -> M:
    """raw (a parsed hand-off file) as `model`, or `error` with one line naming the file, the field and the fix.

    The schema version is checked before the fields, so a file from a newer version says so (with `upgrade`)
    rather than naming a field it moved; so is the I/O contract, where the file records one.
    """
    if not isinstance(raw, dict):
        raise error(f"{path}: must be a JSON object, got {type(raw).__name__}; {fix}")
    version = raw.get("schema_version", schema)
    if not isinstance(version, int) or isinstance(version, bool):  # "2" must not pass as 2
        raise error(f"{path}: schema_version must be a whole number, got {version!r}; {fix}")
    if version > schema:
        raise error(f"{path}: schema_version {version} is newer than this version reads ({schema}); {upgrade}")
    contract = raw.get("contract_version", CONTRACT_VERSION)
    if "contract_version" in model.model_fields and (type(contract) is not int or contract != CONTRACT_VERSION):
        raise error(f"{path}: I/O contract {contract!r} is not this version's ({CONTRACT_VERSION}); {fix}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise error(f"{path}: {field_problem(err, fix)}") from err


class Normalisation(BaseModel):
    """How the raw maps become the contract's map and score (buffers baked into the graph; recorded for audit)."""

    model_config = ConfigDict(extra="forbid")
    q_lo: list[float]
    q_hi: list[float]
    map_weight: list[float]
    score_pool: Literal["max", "mean", "top"]
    score_k: int = Field(1, ge=1, description="map pixels averaged by top pooling (1 otherwise)")
    position_norm: bool = Field(False, description="each raw map divided by its good-image mean per position "
                                "before the quantiles, so q_lo / q_hi are of the divided maps")


class ThresholdBasis(BaseModel):
    """How much a threshold set on this many good images can say (training.report.threshold_basis)."""

    model_config = ConfigDict(extra="allow")
    n_good_images: int
    false_alarm_rate_target: float
    warning: str | None = None


class ModelCard(BaseModel):
    """model.json: what a trained, exported run is."""

    # the family adds its own facts (variant, params, teacher): kept, not interpreted here
    model_config = ConfigDict(extra="allow")
    schema_version: int = MODEL_CARD_SCHEMA
    contract_version: int = CONTRACT_VERSION
    family: str
    model: str
    size_px: int = Field(gt=0)
    threshold: float
    false_alarm_rate_target: float = 0.005
    normalisation: Normalisation
    training_data_fingerprint: str
    dataset: str | None = None
    lineside_version: str
    created: str
    opset: int
    input: dict[str, Any]
    outputs: dict[str, Any]
    threshold_basis: ThresholdBasis | None = None  # None: exported before it was recorded

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.model_dump(), indent=2))


def read_model_card(run: Path) -> ModelCard:
    """The run's model.json, validated; EdgeError names the file and the fix."""
    p = Path(run) / "model.json"
    reexport = f"re-export with `edge-train export {run}`"
    raw = read_document(p, "json", EdgeError, "model card",
                        f"{reexport} (or train it: `edge-train fit --out {run}`)")
    return validate_handoff(ModelCard, raw, p, MODEL_CARD_SCHEMA, EdgeError, reexport,
                            "upgrade lineside, or re-export with this version")
