"""The Quantizer seam: what edge-quantize needs to know about one runtime, and the registry keyed by its name.

The name is the runtime's one spelling: `edge-quantize --runtime`, the `quantized/<name>/` folder, the edge
backend of its bundles and the runtimes of a row in deploy/targets.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from quantize.calib import CalibrationReader
from quantize.errors import QuantizeError

__all__ = ["QUANTIZERS", "Quantizer", "keep_float_sets", "keeps_more_float", "quantizer", "register"]


class Quantizer:
    """One runtime's INT8 artifact. A searched runtime implements `candidates` and `build`, and edge-quantize
    measures every candidate; one that converts directly sets `searches = False` and implements `convert`."""

    name: ClassVar[str]
    backend: ClassVar[str]  # edge backend that runs the artifact here: search, recalibration and gate
    artifact: ClassVar[str]  # file name of the INT8 artifact in quantized/<name>/
    searches: ClassVar[bool] = True
    fp32_copy: ClassVar[str | None] = None  # copy of model.onnx written beside the artifact, shipped with it
    # calibration images of each search candidate when `build` calibrates afresh (None: all); the winner is
    # then rebuilt on all of them
    search_images: ClassVar[int | None] = None
    settings: ClassVar[dict[str, str]] = {}  # recorded in quant.json's source; a change re-makes artifacts
    # ORT-made graphs (the search's sensitivity pass and QDQ candidates) pool through depthwise INT8 convolutions
    pool_convs: ClassVar[bool] = False

    def candidates(self, finals: list[str], head: list[str],
                   sensitive: list[list[str]]) -> list[dict[str, Any]]:
        """What to try, given the final convolutions, the scoring head and each measured sensitive set."""
        raise QuantizeError(f"{self.name} has no candidate search")

    def no_faster(self, cand: dict[str, Any], other: dict[str, Any]) -> bool:
        """Whether cand cannot beat other's latency, so that once other has passed cand is not measured (the
        rule keeps the fastest passing candidate). Default: the same settings keeping a superset in float,
        which is rarely faster."""
        return keeps_more_float(cand, other)

    def build(self, fp32: Path, out: Path, calib: CalibrationReader, cand: dict[str, Any], device: str,
              work: Path) -> Path:
        """One candidate's INT8 artifact at out; `work` holds what the candidates of one search share."""
        raise QuantizeError(f"{self.name} has no candidate search")

    def convert(self, run: Path, out: Path, calib: CalibrationReader) -> dict[str, Any]:
        """Write the artifact into out straight from the trained run; returns what was chosen (quant.json)."""
        raise QuantizeError(f"{self.name} is quantized by a candidate search")

    def float_artifact(self, fp32: Path, out: Path) -> Path:
        """The FP32 model a float bundle of this runtime ships (written under out if it must be converted)."""
        return fp32


QUANTIZERS: dict[str, Quantizer] = {}


def register(q: Quantizer) -> Quantizer:
    """Add a quantizer to the registry under its name."""
    QUANTIZERS[q.name] = q
    return q


def quantizer(name: str) -> Quantizer:
    """The registered quantizer of a runtime name."""
    if name not in QUANTIZERS:
        raise QuantizeError(f"runtime '{name}' unknown; valid runtimes: {', '.join(sorted(QUANTIZERS))}")
    return QUANTIZERS[name]


def keeps_more_float(cand: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether cand has other's settings but keeps a superset of other's layers and op types in float."""
    rest = [k for k in {*cand, *other} if k not in ("keep_float", "float_types")]
    return (all(cand.get(k) == other.get(k) for k in rest)
            and set(cand.get("keep_float", [])) >= set(other.get("keep_float", []))
            and set(cand.get("float_types") or []) >= set(other.get("float_types") or []))


def keep_float_sets(finals: list[str], sensitive: list[list[str]]) -> list[list[str]]:
    """What a candidate may keep in float, no repeats: nothing, the final convolutions, each measured set."""
    keep = [[], finals] + [k for k in sensitive if k]
    return [k for i, k in enumerate(keep) if k not in keep[:i]]
