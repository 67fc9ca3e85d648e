"""OpenVINO backend: IR or ONNX on an Intel NPU, GPU or CPU, with AUTO fallback reported.

The compiled blob is cached under the configured cache directory (never the working directory).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge.backends.base import Backend, Prediction
from edge.errors import BackendUnavailable, BundleError
from edge.telemetry import disable_vendor_telemetry

__all__ = ["OpenVinoBackend", "BACKEND", "choose_device"]

log = logging.getLogger(__name__)


def choose_device(requested: str, available: list[str]) -> tuple[str, str | None]:
    """Pick the OpenVINO device string and say which fallback was taken, if any.

    `npu` -> NPU if present else CPU (fallback reported); `auto` -> AUTO over NPU, GPU, CPU in that order.
    """
    req = requested.lower()
    present = [d for d in ("NPU", "GPU", "CPU") if any(a.startswith(d) for a in available)]
    if req == "auto":
        return ("AUTO:" + ",".join(present), None) if len(present) > 1 else ("CPU", None)
    want = req.upper()
    if want in present:
        return want, None
    return "CPU", f"{want} not present (devices: {', '.join(available) or 'none'}); running on CPU"


class OpenVinoBackend(Backend):
    name = "openvino"
    extra = "openvino"

    def __init__(self, model_path: Path, device: str = "auto", cache_dir: Path | None = None, threads: int = 0) -> None:
        super().__init__(model_path, device, cache_dir, threads)
        disable_vendor_telemetry()  # before the import: importing openvino sends a usage event
        try:
            import openvino as ov
        except ImportError as err:
            raise BackendUnavailable("openvino is not installed: pip install 'lineside[openvino]'") from err
        core = ov.Core()
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache_dir)})
        target, fallback = choose_device(device, core.available_devices)
        if fallback:
            log.warning("openvino: %s", fallback)
        config: dict[str, str] = {"PERFORMANCE_HINT": "LATENCY"}
        if target == "CPU":
            # the CPU plugin picks bf16 on AVX512-BF16 parts; f32 keeps parity with the calibrated threshold
            config["INFERENCE_PRECISION_HINT"] = "f32"
            if threads:
                config["INFERENCE_NUM_THREADS"] = str(threads)
        try:
            model = core.read_model(str(self.model_path))
            self._compiled = core.compile_model(model, target, config)
        except RuntimeError as err:
            raise BundleError(f"{self.model_path}: OpenVINO cannot compile the model for {target}: {err}") from err
        self._request = self._compiled.create_infer_request()
        self.info.version = ov.get_version()
        self.info.device = target
        self.info.fallback = fallback

    def infer(self, image: np.ndarray) -> Prediction:
        out = self._request.infer({"image": image})
        amap = out[self._compiled.output("anomaly_map")]
        score = out[self._compiled.output("score")]
        return Prediction(np.asarray(amap)[0, 0], float(np.asarray(score).reshape(-1)[0]))


BACKEND = OpenVinoBackend
