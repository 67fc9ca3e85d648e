"""LiteRT / TFLite (optional `tflite` extra): PyTorch -> .tflite with litert-torch, full-integer INT8 with
ai-edge-quantizer. The converter stack is heavy (about 2 GB), so it is never a default dependency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantize.calib import CalibrationReader
from quantize.errors import ExtraMissing
from quantize.runtimes.base import Quantizer, register

__all__ = ["LiteRtQuantizer", "convert_litert"]


def convert_litert(run_dir: Path, out_dir: Path, reader: CalibrationReader) -> tuple[Path, Path]:
    """Write model_fp32.tflite and model_int8.tflite for a trained run (needs its PyTorch weights)."""
    try:
        import litert_torch
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as err:
        raise ExtraMissing("LiteRT export needs the tflite extra: pip install 'lineside[tflite]'") from err
    import torch

    from training.run import load_run

    state = load_run(run_dir)
    x = torch.from_numpy(reader.inputs[0])
    fp32 = out_dir / "model_fp32.tflite"
    litert_torch.convert(state.model.eval(), (x,)).export(str(fp32))
    q = quantizer.Quantizer(str(fp32))
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    cal = q.calibrate({"serving_default": [{"args_0": a} for a in reader.inputs]})
    int8 = out_dir / "model_int8.tflite"
    q.quantize(cal, serialize_to_path=str(int8))
    return fp32, int8


class LiteRtQuantizer(Quantizer):
    """Full-integer .tflite converted from the PyTorch weights: no candidate search."""

    name = "litert"
    backend = "litert"
    artifact = "model_int8.tflite"
    searches = False

    def convert(self, run: Path, out: Path, calib: CalibrationReader) -> dict[str, Any]:
        convert_litert(run, out, calib)
        return {"converter": "litert-torch + ai-edge-quantizer"}


register(LiteRtQuantizer())
