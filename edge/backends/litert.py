"""LiteRT (TFLite) backend for ARM boards: ai-edge-litert, or tflite-runtime where only that exists.

Full-integer models carry int8 input/output tensors: the input is quantised and the outputs dequantised with
the scales stored in the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.backends.base import Backend, Prediction
from edge.errors import BackendUnavailable

__all__ = ["LiteRtBackend", "BACKEND"]


class LiteRtBackend(Backend):
    name = "litert"
    extra = "litert"

    def __init__(self, model_path: Path, device: str = "auto", cache_dir: Path | None = None, threads: int = 0) -> None:
        super().__init__(model_path, device, cache_dir, threads)
        try:
            from ai_edge_litert.interpreter import Interpreter
            version = "ai-edge-litert"
        except ImportError:
            try:
                from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
                version = "tflite-runtime"
            except ImportError as err:
                raise BackendUnavailable("LiteRT is not installed: pip install 'lineside[litert]'") from err
        self._interp = Interpreter(model_path=str(self.model_path), num_threads=threads or None)
        self._interp.allocate_tensors()
        self._in = self._interp.get_input_details()[0]
        outs = self._interp.get_output_details()
        # converters rename outputs; the map is the 4-D one, the score the 1-D one
        self._map = next(o for o in outs if len(o["shape"]) == 4)
        self._score = next(o for o in outs if len(o["shape"]) == 1)
        self.info.version = version
        self.info.device = "cpu (XNNPACK)"

    @staticmethod
    def _dequant(detail: dict, value: np.ndarray) -> np.ndarray:
        scale, zero = detail["quantization"]
        return (value.astype(np.float32) - zero) * scale if scale else value.astype(np.float32)

    def infer(self, image: np.ndarray) -> Prediction:
        x = image
        if self._in["dtype"] != np.float32:
            scale, zero = self._in["quantization"]
            info = np.iinfo(self._in["dtype"])
            x = np.clip(np.round(image / scale + zero), info.min, info.max).astype(self._in["dtype"])
        self._interp.set_tensor(self._in["index"], x)
        self._interp.invoke()
        amap = self._dequant(self._map, self._interp.get_tensor(self._map["index"]))
        score = self._dequant(self._score, self._interp.get_tensor(self._score["index"]))
        return Prediction(amap[0, 0], float(score[0]))


BACKEND = LiteRtBackend
