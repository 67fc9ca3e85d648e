"""One training run end to end: fit, export with ORT parity on held-out images, the threshold basis in
model.json, then the evaluation report. `edge-train fit`, the accuracy benches and the test fixtures run
this (bench.train_speed times fit alone)."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.contract import EdgeError, read_quant_result
from training import evaluate as evaluation
from training.config import FitConfig
from training.data import Dataset
from training.export import export_onnx
from training.inference import load_images
from training.loop import fit
from training.report import write_plots
from training.run import RunState

__all__ = ["PARITY_IMAGES", "RunResult", "train_run", "write_report", "bundle_thresholds"]

# held-out good images the export's ORT-vs-torch check runs: real images reach the feature ranges a product
# produces, which noise does not (bench.accuracy once checked parity on noise only)
PARITY_IMAGES = 4


@dataclass(frozen=True)
class RunResult:
    """What train_run made in its run folder."""

    state: RunState
    onnx_path: Path | None  # None with export=False
    report: dict[str, Any] | None  # report.json's content; None with evaluate=False


def train_run(cfg: FitConfig, data: Dataset, out: Path, *, resume: bool = False, progress: bool = True,
              export: bool = True, evaluate: bool = True) -> RunResult:
    """Fit on data into out/, export model.onnx and model.json, then write report.json and plots/ (data.test).

    Args:
        resume: continue from out/checkpoint.pt.
        export: False leaves out model.onnx and model.json, for a caller that needs only the trained model.
        evaluate: False leaves out report.json and plots/, for a caller that scores the test set its own way.
    """
    state = fit(cfg, data, out, resume=resume, progress=progress)
    onnx_path = export_onnx(state, out, load_images(data.val[:PARITY_IMAGES], cfg.size_px)) if export else None
    report = write_report(state, data, out, out) if evaluate else None
    return RunResult(state, onnx_path, report)


def bundle_thresholds(run: Path, state: RunState) -> dict[str, float]:
    """The threshold each bundle of this run uses: FP32's, and each INT8 artifact's (recalibrated) from a
    quant.json made from the run's current model.onnx that passed its gate (a bundle uses no other)."""
    found = {"fp32": float(state.threshold)}
    onnx_path = run / "model.onnx"
    if not onnx_path.is_file():
        return found
    model_sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    for q in sorted((run / "quantized").glob("*/quant.json")):
        try:
            res = read_quant_result(q)
        except EdgeError:
            continue  # unreadable or from a newer version: no bundle of this run uses it (edge-deploy refuses it)
        if res.source is not None and res.source.model_sha256 == model_sha and res.gate.passed:
            found[f"int8 {q.parent.name}"] = res.threshold
    return found


def write_report(state: RunState, data: Dataset, out: Path, run: Path) -> dict[str, Any]:
    """Evaluate the run (folder `run`) on data and write out/report.json and out/plots/ (replacing what an
    earlier report there left, so no stale plot survives); returns the report."""
    report, arrays = evaluation.evaluate(state, data)
    thresholds = bundle_thresholds(run, state)
    report = {"model": state.config.model, "run": str(run), "dataset": str(data.root), "layout": data.layout,
              "training_data_fingerprint": state.fingerprint, **report,
              "bundle_thresholds": thresholds,
              "false_alarm_rate_target": state.config.false_alarm_rate,
              "threshold_basis": state.threshold_basis(),
              "train_minutes": state.meta.get("train_minutes"), "steps_done": state.meta.get("steps_done"),
              "budget": state.meta.get("budget"),
              "recipe": state.config.recipe, "recipe_choice": state.config.recipe_choice,
              "fusion": state.meta.get("fusion")}
    out.mkdir(parents=True, exist_ok=True)
    if (out / "plots").is_dir():
        shutil.rmtree(out / "plots")
    if arrays:
        others = {k.replace("int8 ", "") + " INT8": v for k, v in thresholds.items() if k != "fp32"}
        report["plots"] = write_plots(arrays, state.threshold, out / "plots", f"{state.config.model}",
                                      other_thresholds=others)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report
