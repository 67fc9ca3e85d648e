"""Model families. Importing this package registers every family; MODELS maps CLI names to (family, overrides)."""

from __future__ import annotations

from typing import Any

from training.models import ast, efficientad, fcl
from training.models.base import REGISTRY, AnomalyModel, FamilyParams
from training.errors import TrainConfigError

__all__ = ["REGISTRY", "MODELS", "build_model", "AnomalyModel"]

MODELS: dict[str, tuple[str, dict[str, Any]]] = {}
for _module in (efficientad, ast, fcl):  # each family file ends with its VARIANTS table and registration
    _family = next(c.family for c in REGISTRY.values() if c.__module__ == _module.__name__)
    for _name, _overrides in _module.VARIANTS.items():
        MODELS[_name] = (_family, _overrides)


def build_model(name: str, params: dict[str, Any], size_px: int, seed: int = 0) -> AnomalyModel:
    """Build a model by CLI name (e.g. efficientad-s) with validated family parameters."""
    if name not in MODELS:
        raise TrainConfigError(f"model '{name}' unknown; choose one of {', '.join(sorted(MODELS))}")
    family, overrides = MODELS[name]
    cls = REGISTRY[family]
    from pydantic import ValidationError

    try:
        p: FamilyParams = cls.Params(**{**overrides, **params})
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise TrainConfigError(f"params.{loc}: {first['msg']} (model {name})") from err
    return cls(p, size_px, seed)  # type: ignore[call-arg]
