"""Typed hand-off files. `model.json` (the model card) is written by training's export and read by quantize and
deploy; fields are read as attributes, never by string key, and a file that does not fit says which field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.contract.document import field_problem, read_document
from edge.contract.io import CONTRACT_VERSION
from edge.errors import EdgeError

__all__ = ["ModelCard", "Normalisation", "read_model_card", "MODEL_CARD_SCHEMA"]

MODEL_CARD_SCHEMA = 1


class Normalisation(BaseModel):
    """How the raw maps become the contract's map and score (buffers baked into the graph; recorded for audit)."""

    model_config = ConfigDict(extra="forbid")
    q_lo: list[float]
    q_hi: list[float]
    map_weight: list[float]
    score_pool: Literal["max", "mean", "top"]
    score_k: int = Field(1, ge=1, description="map pixels averaged by top pooling (1 otherwise)")


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

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.model_dump(), indent=2))


def read_model_card(run: Path) -> ModelCard:
    """The run's model.json, validated; EdgeError names the file and the fix."""
    p = Path(run) / "model.json"
    reexport = f"re-export with `edge-train export {run}`"
    raw = read_document(p, "json", EdgeError, "model card",
                        f"{reexport} (or train it: `edge-train fit --out {run}`)")
    try:
        card = ModelCard.model_validate(raw)
    except ValidationError as err:
        raise EdgeError(f"{p}: {field_problem(err, reexport)}") from err
    if card.schema_version > MODEL_CARD_SCHEMA or card.contract_version != CONTRACT_VERSION:
        raise EdgeError(f"{p}: model card schema {card.schema_version} / contract {card.contract_version} is not "
                        f"this version's ({MODEL_CARD_SCHEMA} / {CONTRACT_VERSION}); re-export with this version")
    return card
