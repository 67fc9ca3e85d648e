"""The Backend seam: load a model file of the I/O contract and score one preprocessed image.

Each runtime lives in its own module and imports its vendor package lazily, so a device installs only one.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edge.contract.io import Prediction  # the contract's outputs: one definition, shared with quantize
from edge.errors import BackendUnavailable

__all__ = ["BACKENDS", "Backend", "Prediction", "backend_class", "create_backend"]


@dataclass
class BackendInfo:
    """What actually runs: the runtime, its version, the device chosen and any fallback taken."""

    runtime: str
    version: str
    device: str
    fallback: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """Loads one model artifact and runs `infer` on float32 1x3xSxS inputs."""

    name: ClassVar[str]
    extra: ClassVar[str]  # the pip extra that installs the runtime

    def __init__(self, model_path: Path, device: str = "auto", cache_dir: Path | None = None, threads: int = 0) -> None:
        self.model_path = Path(model_path)
        self.device = device
        self.cache_dir = cache_dir
        self.threads = threads
        self.info = BackendInfo(self.name, "unknown", device)

    @abstractmethod
    def infer(self, image: np.ndarray) -> Prediction:
        """Score one image of the contract (float32 1x3xSxS RGB in [0, 1])."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources."""

    @classmethod
    def bundle_requirements(cls, artifact: Path, size_px: int, device: str) -> dict[str, Any] | None:
        """What a device needs from the bundle, checked when it is built and recorded in its manifest
        (`device_requirements`); None when there is nothing beyond the I/O contract. Raises BundleError."""
        return None


# runtime name -> module path; modules import their vendor runtime only when instantiated
BACKENDS: dict[str, str] = {
    "onnxruntime": "edge.backends.onnxruntime",
    "openvino": "edge.backends.openvino",
    "tensorrt": "edge.backends.tensorrt",
    "litert": "edge.backends.litert",
}


def backend_class(runtime: str) -> type[Backend]:
    """The backend class for a runtime name (imports its module, not its vendor runtime)."""
    if runtime not in BACKENDS:
        raise BackendUnavailable(f"runtime '{runtime}' unknown; valid runtimes: {', '.join(BACKENDS)}")
    cls: type[Backend] = importlib.import_module(BACKENDS[runtime]).BACKEND
    return cls


def create_backend(runtime: str, model_path: Path, device: str = "auto", cache_dir: Path | None = None,
                   threads: int = 0) -> Backend:
    """Instantiate the backend for a runtime name; BackendUnavailable names the extra to install."""
    return backend_class(runtime)(model_path, device, cache_dir, threads)
