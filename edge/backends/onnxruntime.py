"""ONNX Runtime backend: FP32 and QDQ INT8 graphs on CPU (x86, ARM); CUDA/TensorRT providers if present."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.backends.base import Backend, Prediction
from edge.errors import BackendUnavailable, BundleError

__all__ = ["OnnxRuntimeBackend", "BACKEND"]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    extra = "ort"

    def __init__(self, model_path: Path, device: str = "auto", cache_dir: Path | None = None, threads: int = 0) -> None:
        super().__init__(model_path, device, cache_dir, threads)
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise BackendUnavailable("onnxruntime is not installed: pip install 'lineside[ort]'") from err
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        available = ort.get_available_providers()
        wanted = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
            wanted.insert(0, "CUDAExecutionProvider")
        try:
            self._sess = ort.InferenceSession(str(self.model_path), opts, providers=wanted)
        except Exception as err:  # ORT raises its own untyped errors for bad graphs
            raise BundleError(f"{self.model_path}: ONNX Runtime cannot load the model: {err}") from err
        self.info.version = ort.__version__
        self.info.device = self._sess.get_providers()[0]
        if device == "cuda" and self.info.device != "CUDAExecutionProvider":
            self.info.fallback = "CUDA provider missing; running on CPU"

    def infer(self, image: np.ndarray) -> Prediction:
        amap, score = self._sess.run(["anomaly_map", "score"], {"image": image})
        return Prediction(amap[0, 0], float(score[0]))


BACKEND = OnnxRuntimeBackend
