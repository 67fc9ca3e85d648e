"""`edge-quantize RUN --runtime NAME` (quantize/runtimes/): INT8 with measured mixed precision and a gate.

Candidates (calibration method x what stays in float) are scored on held-out good images plus synthetic
defects pasted at graded strengths, from plain to barely visible; the fastest that separates them as well as
FP32 does is kept, its outputs are re-anchored on good images, its threshold recomputed, and the
FP32-vs-INT8 gate runs on the labelled test set (or the synthetic one): an image-AUROC or AUPRO drop above
--max-drop, or a false-alarm rise above --max-far-increase at the bundle's threshold, exits 1. quant.json records
the FP32 model, images and settings the artifact came from, so edge-deploy never reuses a stale one.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.contract import QuantResult, read_model_card
from quantize.gate import MAX_DROP, MAX_FAR_INCREASE
from quantize.runtimes import QUANTIZERS, quantizer

__all__ = ["build_parser", "main", "quantize_run"]

DEPRECATED_RUNTIMES = {"ort": "onnxruntime"}  # old spelling accepted by --runtime -> the runtime's name
# SQNR bounds (dB) of the per-layer sensitivity measurement: each gives one set of layers kept in float
SENSITIVITY_BOUNDS_DB = (20.0, 30.0, 40.0)
# Strengths at which the selection set's defects are blended into good images. Full-strength pasted defects
# alone are separated perfectly by every candidate that is not broken (selection AUROC 1.0 for all, measured),
# so the set would not tell a graph that loses faint defects from one that keeps them; the faint rungs make
# FP32's own AUROC on the set informative and a candidate's drop from it is the loss that matters.
SELECTION_STRENGTHS = (0.05, 0.1, 0.2, 0.4, 0.8)
# good images the selection set is built from: each candidate is scored on them and their 5 defect rungs, so
# this bounds the search's cost (20 at 256 px: 120 inferences per candidate, most of its time)
MAX_SELECTION_GOODS = 12
MIN_SPEARMAN = 0.0  # default of --min-spearman: an optional extra guard on rank agreement (off)
MAX_CALIB = 64  # default of --max-calib: calibration images


_MEASURED = ("selection_auroc", "spearman", "mean_abs_map_error", "latency_ms")


def _acceptable(row: dict[str, Any], fp32_auroc: float, max_drop: float, min_spearman: float = MIN_SPEARMAN) -> bool:
    """Whether a measured candidate keeps accuracy: selection AUROC within max_drop of FP32's and, when
    min_spearman > 0, Spearman >= min_spearman."""
    return row["selection_auroc"] >= fp32_auroc - max_drop and (min_spearman <= 0 or row["spearman"] >= min_spearman)


def _choose(rows: list[dict[str, Any]], fp32_auroc: float, max_drop: float, min_spearman: float = MIN_SPEARMAN) -> int:
    """Index of the fastest candidate that keeps accuracy (selection AUROC within max_drop of FP32 and, when
    min_spearman > 0, Spearman >= min_spearman); if none does, the most accurate one (the gate then reports
    the failure)."""
    ok = [i for i, r in enumerate(rows) if _acceptable(r, fp32_auroc, max_drop, min_spearman)]
    if ok:
        return min(ok, key=lambda i: rows[i]["latency_ms"])
    return max(range(len(rows)), key=lambda i: (round(rows[i]["selection_auroc"], 4), rows[i]["spearman"]))


def _sensitivity(fp32: Path, calib: Any, inputs: list[np.ndarray], tmp: Path, pool_convs: bool) -> dict[str, float]:
    """Per-layer SQNR of a fully quantized graph (ORT MinMax, convolutions) against FP32, on good images;
    pool_convs: the pooling as the runtime's candidates quantize it (the same pre-processed graph)."""
    from quantize.runtimes.onnxruntime import quantize_qdq
    from quantize.sensitivity import layer_sqnr

    full = quantize_qdq(fp32, _mk(tmp / "sensitivity") / "full.onnx", calib, "minmax", "conv", [], work=tmp / "shared",
                        pool_convs=pool_convs)
    return layer_sqnr(fp32, full, inputs)


def _select_set(held_out: list[np.ndarray], size: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Held-out good images, and each with a pasted defect blended in at every SELECTION_STRENGTHS rung."""
    from training.selection import structural_defects

    goods = [(x[0].transpose(1, 2, 0) * 255).round().astype(np.uint8) for x in held_out]
    inputs = list(held_out)
    for k, alpha in enumerate(SELECTION_STRENGTHS):
        defects, _ = structural_defects(goods, size, seed + 1 + k)
        for good, d in zip(held_out, defects):
            full = np.ascontiguousarray((d.astype(np.float32) / 255).transpose(2, 0, 1)[None])
            inputs.append(good + np.float32(alpha) * (full - good))
    n_bad = len(inputs) - len(held_out)
    return inputs, np.r_[np.zeros(len(held_out), int), np.ones(n_bad, int)]


def quantize_run(run: Path, runtime: str, max_drop: float = MAX_DROP, calib_dir: Path | None = None,
                 device: str = "CPU", max_calib: int = MAX_CALIB, out: Path | None = None,
                 data_dir: Path | None = None, min_spearman: float = MIN_SPEARMAN,
                 max_far_increase: float = MAX_FAR_INCREASE) -> QuantResult:
    """Quantize a trained run for a runtime; returns the result (also written as quant.json)."""
    from quantize.calib import CalibrationReader, build_sets
    from quantize.errors import QuantizeError
    from quantize.gate import gate_report, plot_scores, recalibrate, score_all, score_timed, spearman
    from quantize.graph import final_convs, head_nodes
    from quantize.provenance import artifact_sha256, expected_source
    from quantize.sensitivity import sensitive_nodes
    from training.metrics import auroc, threshold_at_far
    from training.report import threshold_basis

    q = quantizer(runtime)
    fp32 = run / "model.onnx"
    if not fp32.is_file() or not (run / "model.json").is_file():
        raise QuantizeError(f"{run}: model.onnx/model.json missing; train with `edge-train fit --out {run}` first")
    card = read_model_card(run)
    if data_dir is not None:
        card = card.model_copy(update={"dataset": str(data_dir)})
    source = expected_source(run, runtime, device=device, max_drop=max_drop, max_far_increase=max_far_increase,
                             max_calib=max_calib, min_spearman=min_spearman, calib_dir=calib_dir,
                             data_dir=data_dir)
    out = out or run / "quantized" / runtime
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    print(f"[1/4] reading good images for calibration ({runtime})", flush=True)
    calib, held_out, gate = build_sets(card, calib_dir, max_calib)
    size = card.size_px
    far = card.false_alarm_rate_target

    if not q.searches:
        decision: dict[str, Any] = {"candidates": [], "chosen": q.convert(run, out, calib)}
        artifact = out / q.artifact
    else:
        sel_inputs, sel_labels = _select_set(held_out[:MAX_SELECTION_GOODS], size, 0)
        f_sel_maps, f_sel = score_all("onnxruntime", fp32, sel_inputs)
        finals, head = final_convs(fp32), head_nodes(fp32)
        fp32_auroc = auroc(sel_labels, f_sel)
        rows = []
        arts = []
        tmp = Path(tempfile.mkdtemp(prefix="lineside-q-"))
        print(f"[2/4] per-layer sensitivity on {min(4, len(held_out))} held-out good images", flush=True)
        sqnr = _sensitivity(fp32, calib, held_out[:4], tmp, q.pool_convs)
        sensitive = [sensitive_nodes(sqnr, b) for b in SENSITIVITY_BOUNDS_DB]
        cands = q.candidates(finals, head, sensitive)
        # a runtime that calibrates each candidate afresh is searched on a subset, and the winner rebuilt on all
        search_calib = calib if q.search_images is None else CalibrationReader(calib.inputs[: q.search_images])
        passed: list[int] = []
        skipped = []
        for i, cand in enumerate(cands):
            beaten = next((j for j in passed if q.no_faster(cand, cands[j])), None)
            if beaten is not None:
                # the rule keeps the fastest passing candidate: what the quantizer knows to be no faster than
                # one that passed is not measured
                skipped.append({**cand, "skipped": f"no faster than candidate {beaten + 1}, which passed"})
                print(f"[2/4] candidate {i + 1}/{len(cands)}: skipped (no faster than {beaten + 1}, which passed)", flush=True)
                continue
            print(f"[2/4] candidate {i + 1}/{len(cands)}: {_describe(cand)}", flush=True)
            art = q.build(fp32, _mk(tmp / f"c{i}") / q.artifact, search_calib, cand, device, tmp / "shared")
            q_maps, q_sel, ms = score_timed(q.backend, art, sel_inputs)
            rows.append({**cand, "selection_auroc": round(auroc(sel_labels, q_sel), 5),
                         "spearman": round(spearman(f_sel, q_sel), 5),
                         "mean_abs_map_error": round(float(np.abs(q_maps - f_sel_maps).mean()), 6),
                         "latency_ms": round(ms, 2)})
            arts.append(art)
            if _acceptable(rows[-1], fp32_auroc, max_drop, min_spearman):
                passed.append(i)
        pick = _choose(rows, fp32_auroc, max_drop, min_spearman)
        chosen = {k: v for k, v in rows[pick].items() if k not in _MEASURED}
        art = arts[pick]
        if len(search_calib) < len(calib):
            print(f"[2/4] the chosen candidate again, calibrated on all {len(calib)} images", flush=True)
            art = q.build(fp32, _mk(tmp / "final") / q.artifact, calib, chosen, device, tmp / "shared")
        for f in art.parent.iterdir():
            shutil.copy2(f, out / f.name)
        shutil.rmtree(tmp, ignore_errors=True)
        artifact = out / q.artifact
        decision = {"candidates": rows, "skipped": skipped, "chosen": chosen,
                    "search_calibration_images": len(search_calib), "final_convs": finals, "head": head,
                    "rule": f"fastest candidate with selection AUROC >= FP32 {fp32_auroc:.4f} - {max_drop}"
                            + (f" and Spearman >= {min_spearman}" if min_spearman > 0 else "")
                            + "; else the most accurate",
                    "sensitivity": {"method": "output SQNR (dB), FP32 vs fully quantized (ORT MinMax)",
                                    "bounds_db": list(SENSITIVITY_BOUNDS_DB),
                                    "sqnr_db": dict(sorted(sqnr.items(), key=lambda kv: kv[1]))},
                    "selection_set": f"{len(sel_labels) - int(sel_labels.sum())} held-out good images + {int(sel_labels.sum())} "
                                     f"pasted defects (strengths {list(SELECTION_STRENGTHS)})",
                    "selection_auroc_fp32": round(fp32_auroc, 5)}
        if q.fp32_copy:
            shutil.copy2(fp32, out / q.fp32_copy)

    print("[3/4] recalibrating map normalisation and threshold on good images", flush=True)
    backend = q.backend
    f_good_maps, _ = score_all("onnxruntime", fp32, held_out)
    q_good_maps, q_good_raw = score_all(backend, artifact, held_out)
    affine = recalibrate(f_good_maps, q_good_maps)
    # the score the device thresholds: the artifact's own score output (its pooling: max, mean or top-k mean),
    # re-anchored by the same affine the bundle applies
    q_good = q_good_raw * affine.scale + affine.offset
    thr_int8 = threshold_at_far(q_good, far)
    basis = threshold_basis(len(held_out), far)
    thr_fp32 = card.threshold

    print(f"[4/4] accuracy gate on {gate.origin} ({len(gate.labels)} images)", flush=True)
    fm, fs = score_all("onnxruntime", fp32, gate.inputs)
    qm, qs = score_all(backend, artifact, gate.inputs)
    qm, qs = qm * affine.scale + affine.offset, qs * affine.scale + affine.offset
    rep = gate_report(gate.labels, gate.masks, (fm, fs), (qm, qs), thr_fp32, thr_int8, max_drop, max_far_increase)
    rep["gate_set"] = gate.origin
    plot_scores(fs, qs, gate.labels, thr_fp32, thr_int8, out / "gate.png", f"{card.model} {runtime} INT8 vs FP32", rep)
    result = QuantResult.model_validate({
        "runtime": runtime, "artifact": artifact.name, "precision": "int8", "device": device,
        "threshold": thr_int8, "threshold_fp32": thr_fp32, "threshold_basis": basis,
        "output_affine": affine,
        "calibration": {"n_images": len(calib), "source": str(calib_dir) if calib_dir else "training good images"},
        "mixed_precision": decision, "gate": rep, "minutes": round((time.monotonic() - t0) / 60, 2),
        "source": source.model_copy(update={"artifact_sha256": artifact_sha256(artifact)}),
    })
    result.write(out / "quant.json")
    return result


def _describe(cand: dict[str, Any]) -> str:
    """One line for a candidate: its settings and how many layers stay float (the list is in quant.json)."""
    parts = [f"{k}={v}" for k, v in cand.items() if k not in ("keep_float", "float_types")]
    parts.append(f"{len(cand.get('keep_float', []))} nodes float")
    if cand.get("float_types"):
        parts.append("elementwise ops float")
    return ", ".join(parts)


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def build_parser() -> argparse.ArgumentParser:
    """edge-quantize's arguments; the gate defaults are quantize.gate's, the ones edge-deploy uses."""
    from training.clihelp import DefaultsHelpFormatter

    p = argparse.ArgumentParser(prog="edge-quantize", description="INT8 post-training quantization with an accuracy gate.",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("run", help="trained run folder (model.onnx + model.json)")
    names = sorted(QUANTIZERS)
    p.add_argument("--runtime", required=True, choices=names + sorted(DEPRECATED_RUNTIMES),
                   metavar="{" + ",".join(names) + "}",
                   help="runtime the INT8 artifact is for ("
                        + ", ".join(f"{old}: deprecated spelling of {new}" for old, new in DEPRECATED_RUNTIMES.items())
                        + ")")
    p.add_argument("--max-drop", type=float, default=MAX_DROP,
                   help="largest allowed image-AUROC drop, and AUPRO drop where masks exist")
    p.add_argument("--max-far-increase", type=float, default=MAX_FAR_INCREASE,
                   help="largest allowed rise of the false-alarm rate on good images at the bundle's threshold")
    p.add_argument("--data", type=Path, help="dataset folder (default: the one the run was trained on)")
    p.add_argument("--calib-dir", type=Path, help="folder of good images for calibration (default: training good images)")
    p.add_argument("--device", choices=["CPU", "NPU"], default="CPU", help="OpenVINO target device for NNCF")
    p.add_argument("--max-calib", type=int, default=MAX_CALIB, help="calibration images")
    p.add_argument("--min-spearman", type=float, default=MIN_SPEARMAN,
                   help="also require this Spearman rank agreement with FP32 on the selection set "
                        "(default off: the graded selection set's AUROC already measures what INT8 loses)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def next_hint(run: Path, runtime: str) -> str:
    """The command to run after a passing edge-quantize: a bundle from the deploy targets that use this INT8
    artifact (the target table decides; `cpu` picks the faster of its runtimes itself)."""
    from deploy.targets import TARGETS

    targets = [t.name for t in TARGETS.values() if runtime in t.runtimes]
    if not targets:
        return f"next: no edge-deploy target builds {runtime} bundles yet; the artifact is in {run / 'quantized' / runtime}"
    return f"next: edge-deploy --target {'|'.join(targets)} {run} --out bundles/{run.name}"


def main(argv: list[str] | None = None) -> int:
    from edge.contract import EdgeError
    from quantize.errors import QuantizeError
    from quantize.gate import gate_failure
    from training.errors import TrainingError

    a = build_parser().parse_args(argv)
    runtime = DEPRECATED_RUNTIMES.get(a.runtime, a.runtime)
    if runtime != a.runtime:
        print(f"edge-quantize: warning: --runtime {a.runtime} is deprecated; use --runtime {runtime}", file=sys.stderr)
    try:
        res = quantize_run(Path(a.run), runtime, a.max_drop, a.calib_dir, a.device, a.max_calib, data_dir=a.data,
                           min_spearman=a.min_spearman, max_far_increase=a.max_far_increase)
    except (QuantizeError, EdgeError, TrainingError) as err:
        if a.debug:
            raise
        print(f"edge-quantize: error: {err}", file=sys.stderr)
        return 1
    figures = res.gate.model_dump()  # the gate's figures, named as gate_report names them
    print(f"{runtime} INT8: {res.artifact}  chosen {_describe(res.mixed_precision.chosen)}")
    for k in ("image_auroc_fp32", "image_auroc_int8", "image_auroc_drop", "aupro_drop", "spearman_scores",
              "false_alarm_rate_fp32", "false_alarm_rate_int8", "false_alarm_rate_change"):
        if k in figures:
            print(f"  {k:<24} {figures[k]}")
    print(f"  threshold (recalibrated)  {res.threshold:.4f}")
    if res.threshold_basis is not None and res.threshold_basis.warning:
        print(f"  warning: {res.threshold_basis.warning}")
    print(f"report: {Path(a.run) / 'quantized' / runtime / 'quant.json'}")
    if not res.gate.passed:
        print(f"edge-quantize: {gate_failure(figures)}", file=sys.stderr)
        return 1
    print(next_hint(Path(a.run), runtime))
    return 0


if __name__ == "__main__":
    sys.exit(main())
