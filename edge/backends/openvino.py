"""OpenVINO backend: IR or ONNX on an Intel NPU, GPU or CPU, with every fallback reported.

Compiled blobs are cached under the configured cache directory (never the working directory), in a folder keyed
by the OpenVINO version, the device and its driver version: an NPU blob compiled by one driver is never offered
to another (a driver update means one recompile, not a stale or refused blob).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge.backends.base import Backend, Prediction
from edge.errors import BackendUnavailable, BundleError
from edge.telemetry import disable_vendor_telemetry

__all__ = ["BACKEND", "CACHE_LAYOUT", "OpenVinoBackend", "cache_dir_for", "choose_device", "driver_version",
           "static_io"]

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


# where a compiled blob lives under the cache directory; the bundle records the same layout (bundle_requirements)
CACHE_LAYOUT = "openvino/{runtime_version}/{device}-driver-{driver_version}"


def driver_version(core: Any, device: str) -> str:
    """The device driver's version as OpenVINO reports it ('none' for the CPU, 'unknown' if not reported)."""
    if device == "CPU":
        return "none"
    key = {"NPU": "NPU_DRIVER_VERSION", "GPU": "GPU_DRIVER_VERSION"}.get(device.split(".")[0])
    try:
        return str(core.get_property(device, key)) if key else "unknown"
    except RuntimeError:  # property not offered by this plugin or driver build
        return "unknown"


def cache_dir_for(cache_dir: Path, runtime_version: str, device: str, driver: str) -> Path:
    """The blob folder for one (OpenVINO version, device, driver) triple, with path-safe names."""

    def safe(v: str) -> str:
        return "".join(c if c.isalnum() or c in ".-_" else "_" for c in v)

    return cache_dir / CACHE_LAYOUT.format(runtime_version=safe(runtime_version), device=safe(device),
                                           driver_version=safe(driver))


def static_io(model_path: Path) -> dict[str, list[int]]:
    """Every input and output shape of the model; BundleError when any is dynamic (the NPU compiles static only)."""
    disable_vendor_telemetry()
    try:
        import openvino as ov
    except ImportError as err:
        raise BackendUnavailable("openvino is not installed: pip install 'lineside[openvino]'") from err
    model = ov.Core().read_model(str(model_path))
    shapes: dict[str, list[int]] = {}
    for port in [*model.inputs, *model.outputs]:
        ps = port.get_partial_shape()
        if not ps.is_static:
            raise BundleError(f"{model_path.name}: {port.get_any_name()} has dynamic shape {ps}; the NPU compiles "
                              "static shapes only (re-export with the contract's static [1,3,S,S] input)")
        shapes[port.get_any_name()] = [int(d) for d in ps.to_shape()]
    return shapes


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
        target, fallback = choose_device(device, core.available_devices)
        try:
            model = core.read_model(str(self.model_path))
            self._compiled, blobs = self._compile(core, model, target, ov.get_version(), threads)
        except RuntimeError as err:
            if target != "NPU":
                raise BundleError(f"{self.model_path}: OpenVINO cannot compile the model for {target}: {err}") from err
            # the line keeps running on the CPU, reported as degraded on the status topic (never silent)
            fallback = f"NPU present but the model did not compile for it ({str(err).splitlines()[0][:200]}); " \
                       "running on CPU"
            target = "CPU"
            try:
                self._compiled, blobs = self._compile(core, model, target, ov.get_version(), threads)
            except RuntimeError as err2:
                raise BundleError(f"{self.model_path}: OpenVINO cannot compile the model for NPU or CPU: "
                                  f"{err2}") from err2
        if fallback:
            log.warning("openvino: %s", fallback)
        self._request = self._compiled.create_infer_request()
        self.info.version = ov.get_version()
        self.info.device = target
        self.info.fallback = fallback
        self.info.extra = {"blob_cache": str(blobs) if blobs else None,
                           "driver_version": driver_version(core, target)}

    def _compile(self, core: Any, model: Any, target: str, version: str, threads: int) -> tuple[Any, Path | None]:
        """Compile for one device with its blob cache folder (keyed by runtime, device and driver version)."""
        config: dict[str, str] = {"PERFORMANCE_HINT": "LATENCY"}
        blobs = None
        if self.cache_dir is not None:
            blobs = cache_dir_for(self.cache_dir, version, target, driver_version(core, target))
            blobs.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(blobs)
        if target == "CPU":
            # the CPU plugin picks bf16 on AVX512-BF16 parts; f32 keeps parity with the calibrated threshold
            config["INFERENCE_PRECISION_HINT"] = "f32"
            if threads:
                config["INFERENCE_NUM_THREADS"] = str(threads)
        return core.compile_model(model, target, config), blobs

    @classmethod
    def bundle_requirements(cls, artifact: Path, size_px: int, device: str) -> dict[str, Any] | None:
        """For an NPU bundle: its static I/O shapes (refused if dynamic), the blob cache layout, the fallback."""
        if device.lower() != "npu":
            return None
        shapes = static_io(artifact)
        if shapes.get("image") != [1, 3, size_px, size_px]:
            raise BundleError(f"{artifact.name}: input 'image' is {shapes.get('image')}, expected [1, 3, {size_px}, "
                              f"{size_px}] (static) for the NPU")
        return {"device": "NPU", "static_shapes": shapes,
                "compiled_blob_cache": {"layout": "<cache_dir>/" + CACHE_LAYOUT,
                                        "keyed_by": ["OpenVINO runtime version", "device", "device driver version"]},
                "fallback": {"device": "CPU", "when": "no NPU present, or the model does not compile for it",
                             "reported": "status topic state 'degraded' with the reason in problems and "
                                         "backend.fallback; systemd STATUS says DEGRADED"}}

    def infer(self, image: np.ndarray) -> Prediction:
        out = self._request.infer({"image": image})
        amap = out[self._compiled.output("anomaly_map")]
        score = out[self._compiled.output("score")]
        return Prediction(np.asarray(amap)[0, 0], float(np.asarray(score).reshape(-1)[0]))


BACKEND = OpenVinoBackend
