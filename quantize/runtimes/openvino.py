"""OpenVINO: convert the ONNX graph to IR and quantize it with NNCF post-training quantization.

Static input shape, weights kept FP32 in the IR (no silent FP16 compression), target device set so NNCF
picks the NPU's or the CPU's quantization scheme.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from edge.telemetry import disable_vendor_telemetry
from quantize.calib import CalibrationReader
from quantize.errors import ExtraMissing
from quantize.runtimes.base import Quantizer, keep_float_sets, register

__all__ = ["OpenVinoQuantizer", "convert_fp32", "quantize_nncf"]

# OpenVINO operation types of the distance/normalisation head: the anomaly signal is a small difference
# of large activations, so these are a candidate for staying in float
ELEMENTWISE = ("Add", "Subtract", "Multiply", "Divide", "Power", "ReduceMean", "ReduceMax", "Interpolate", "Concat")


def _ov():  # noqa: ANN202
    disable_vendor_telemetry()  # before the imports: both send usage events by default
    try:
        import nncf
        import openvino as ov
    except ImportError as err:
        raise ExtraMissing("OpenVINO quantization needs openvino and nncf: pip install 'lineside[quantize]'") from err
    # NNCF logs every ignored node and skipped quantizer at INFO (~850 lines for one edge-quantize run); its
    # progress bars and warnings stay
    nncf.set_log_level(logging.WARNING)
    return ov, nncf


def convert_fp32(fp32: Path, out: Path) -> Path:
    """Write the FP32 IR (out.xml/out.bin) of an ONNX graph with its static shape."""
    ov, _ = _ov()
    model = ov.convert_model(str(fp32))
    ov.save_model(model, str(out), compress_to_fp16=False)
    return out


def quantize_nncf(fp32: Path, out: Path, reader: CalibrationReader, device: str = "CPU",
                  ignore: list[str] | None = None, float_types: list[str] | None = None) -> Path:
    """Write an INT8 IR; `ignore` lists ONNX node names kept in float (matched on OpenVINO's names)."""
    ov, nncf = _ov()
    model = ov.convert_model(str(fp32))
    ignored = None
    if ignore or float_types:
        # OpenVINO keeps the ONNX node name as the prefix of the operation's friendly name; a trailing '/'
        # marks a whole branch
        pats = [f"^{re.escape(n)}.*" if n.endswith("/") else f"^{re.escape(n)}(/.*)?$" for n in ignore or []]
        ignored = nncf.IgnoredScope(patterns=pats, types=float_types or [],
                                    validate=False)
    target = {"CPU": nncf.TargetDevice.CPU, "NPU": nncf.TargetDevice.NPU}[device]
    dataset = nncf.Dataset(reader.inputs)
    kwargs = {"subset_size": len(reader.inputs), "target_device": target}
    if ignored is not None:
        kwargs["ignored_scope"] = ignored
    q = nncf.quantize(model, dataset, **kwargs)
    ov.save_model(q, str(out), compress_to_fp16=False)
    return out


class OpenVinoQuantizer(Quantizer):
    """NNCF INT8 IR for OpenVINO, for the CPU's or the NPU's quantization scheme (`device`)."""

    name = "openvino"
    backend = "openvino"
    artifact = "model_int8.xml"
    # NNCF collects statistics for each candidate (no public reuse for post-training quantization in nncf 3.4):
    # most of a 256 px search's 4 minutes with 60 images
    search_images = 16

    def candidates(self, finals: list[str], head: list[str],
                   sensitive: list[list[str]]) -> list[dict[str, Any]]:
        keep = keep_float_sets(finals, sensitive)
        # NNCF fuses activations itself; what varies is what stays float, with and without the elementwise
        # ops (by type: the head's node names do not cover what NNCF quantizes around it, measured)
        return [{"keep_float": k} for k in keep] + [{"keep_float": k, "float_types": list(ELEMENTWISE)} for k in keep]

    def build(self, fp32: Path, out: Path, calib: CalibrationReader, cand: dict[str, Any], device: str,
              work: Path) -> Path:
        return quantize_nncf(fp32, out, calib, device, cand["keep_float"], cand.get("float_types"))

    def float_artifact(self, fp32: Path, out: Path) -> Path:
        return convert_fp32(fp32, out / "model_fp32.xml")


register(OpenVinoQuantizer())
