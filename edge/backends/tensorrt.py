"""TensorRT backend for NVIDIA Jetson: the engine is built on the device from the bundle's ONNX graph.

Engines are tied to the TensorRT version and the GPU, so none is shipped: the first start (or
`edge-deploy build-engine`) builds one with the TensorRT Python API (INT8 from the explicit QDQ graph, or
FP16 from the FP32 graph), keeps a timing cache, and caches the engine under a key of the graph's hash,
the TensorRT version, the GPU name and its compute capability. A changed key means a rebuild.
Written against the TensorRT 8.6 and 10.x Python APIs; `trtexec_command` gives the CLI equivalent.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge.backends.base import Backend, Prediction
from edge.errors import BackendUnavailable, BundleError

__all__ = ["TensorRtBackend", "BACKEND", "EngineKey", "engine_cache_path", "trtexec_command", "build_engine"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; any change forces a rebuild."""

    onnx_sha256: str
    precision: str  # "int8" (explicit QDQ graph) or "fp16"
    trt_version: str
    gpu_name: str
    compute_capability: str
    dla_core: int | None = None

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def engine_cache_path(cache_dir: Path, key: EngineKey) -> Path:
    """Where the engine for key lives: <cache>/tensorrt/<trt-version>/<gpu>-sm<cc>/<digest>.engine."""
    gpu = "".join(c if c.isalnum() else "_" for c in key.gpu_name)
    return cache_dir / "tensorrt" / key.trt_version / f"{gpu}-sm{key.compute_capability.replace('.', '')}" / f"{key.digest()}.engine"


def trtexec_command(onnx_path: Path, engine_path: Path, precision: str, timing_cache: Path,
                    dla_core: int | None = None, workspace_mib: int = 1024) -> list[str]:
    """The trtexec command line equivalent to `build_engine` (for integrators and as a fallback)."""
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", f"--timingCacheFile={timing_cache}",
           f"--memPoolSize=workspace:{workspace_mib}M", "--skipInference"]
    cmd.append("--int8" if precision == "int8" else "--fp16")
    if precision == "int8":
        cmd.append("--fp16")  # layers kept in float by the QDQ graph may run in FP16
    if dla_core is not None:
        cmd += [f"--useDLACore={dla_core}", "--allowGPUFallback"]
    return cmd


def _gpu() -> tuple[str, str]:
    from cuda.bindings import runtime as cudart  # cuda-python >= 12.6

    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        raise BackendUnavailable("no CUDA device visible: TensorRT needs the Jetson GPU (check /dev/nvhost-* access)")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00"), f"{props.major}.{props.minor}"


def build_engine(onnx_path: Path, precision: str, cache_dir: Path, dla_core: int | None = None,
                 workspace_mib: int = 1024) -> Path:
    """Build (or reuse) the engine for onnx_path on this device and return its cached path."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise BackendUnavailable("tensorrt is not installed: on a Jetson use JetPack's python3-libnvinfer") from err
    gpu_name, cc = _gpu()
    key = EngineKey(hashlib.sha256(onnx_path.read_bytes()).hexdigest(), precision, trt.__version__, gpu_name, cc, dla_core)
    path = engine_cache_path(cache_dir, key)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"{onnx_path}: TensorRT cannot parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # scales come from the graph's Q/DQ nodes, no calibrator
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache_file = path.parent / "timing.cache"
    timing = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    log.info("building TensorRT %s engine for %s (%s, sm %s); this takes minutes", precision, onnx_path.name, gpu_name, cc)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise BundleError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
    cache_file.write_bytes(memoryview(config.get_timing_cache().serialize()))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(memoryview(blob))
    tmp.replace(path)
    return path


class TensorRtBackend(Backend):
    name = "tensorrt"
    extra = "tensorrt"

    def __init__(self, model_path: Path, device: str = "auto", cache_dir: Path | None = None, threads: int = 0) -> None:
        super().__init__(model_path, device, cache_dir, threads)
        try:
            import tensorrt as trt
            from cuda.bindings import runtime as cudart
        except ImportError as err:
            raise BackendUnavailable("tensorrt/cuda-python not installed: pip install 'lineside[tensorrt]' (JetPack)") from err
        precision = "int8" if "int8" in self.model_path.name else "fp16"
        dla = int(device.split(":")[1]) if device.startswith("dla:") else None
        engine_path = build_engine(self.model_path, precision, cache_dir or self.model_path.parent / "cache", dla)
        self._cudart = cudart
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        self._ctx = self._engine.create_execution_context()
        _, self._stream = cudart.cudaStreamCreate()
        self._host: dict[str, np.ndarray] = {}
        self._dev: dict[str, int] = {}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(self._engine.get_tensor_shape(name))
            self._host[name] = np.empty(shape, dtype=np.float32)
            _, ptr = cudart.cudaMalloc(self._host[name].nbytes)
            self._dev[name] = ptr
            self._ctx.set_tensor_address(name, ptr)
        self.info.version = trt.__version__
        self.info.device = f"dla:{dla}" if dla is not None else "gpu"
        self.info.extra = {"engine": str(engine_path), "precision": precision}

    def infer(self, image: np.ndarray) -> Prediction:
        cu = self._cudart
        h2d, d2h = cu.cudaMemcpyKind.cudaMemcpyHostToDevice, cu.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cu.cudaMemcpyAsync(self._dev["image"], image.ctypes.data, image.nbytes, h2d, self._stream)
        self._ctx.execute_async_v3(self._stream)
        for name in ("anomaly_map", "score"):
            cu.cudaMemcpyAsync(self._host[name].ctypes.data, self._dev[name], self._host[name].nbytes, d2h, self._stream)
        cu.cudaStreamSynchronize(self._stream)
        return Prediction(self._host["anomaly_map"][0, 0].copy(), float(self._host["score"][0]))

    def close(self) -> None:
        for ptr in self._dev.values():
            self._cudart.cudaFree(ptr)
        self._dev.clear()


BACKEND = TensorRtBackend
