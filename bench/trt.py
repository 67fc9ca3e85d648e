"""TensorRT check of `--target jetson` bundles on a machine with an NVIDIA GPU and the `tensorrt` package: builds
each engine with `edge-deploy build-engine` (INT8 from the QDQ graph, FP16 from the FP32 graph), loads it through
the daemon's path (golden self-test), and compares with ONNX Runtime FP32 on the golden and test images: score
correlation, verdict flips, image-AUROC drop, map difference; plus latency at batch 1 (host -> GPU -> host).

    python -m bench.trt J_INT8 J_FP16 --images DIR [--out bench-out/trt]   # on the GPU machine
    python -m bench.trt J_INT8 J_FP16 --images DIR --dry-run                # anywhere: no TensorRT

`--dry-run` runs every step that needs no TensorRT (the checks of the ONNX graph TensorRT will be given, the exact
trtexec command, the ONNX Runtime side of the comparison) and says that TensorRT was not run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from deploy.targets import TARGETS

__all__ = ["auroc", "compare", "main", "onnx_checks"]

TRT_MAX_TOPK = TARGETS["jetson"].max_topk  # TopK k limit of the oldest TensorRT the jetson target accepts
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def onnx_checks(path: Path) -> dict[str, Any]:
    """What TensorRT needs from the graph it is given; `problems` lists every violation found.

    Static 1x3xSxS float input (no dynamic-shape profile is built); the contract's outputs; explicit quantization
    with symmetric INT8 Q/DQ (TensorRT accepts zero points of 0 only) when the graph has any; TopK k within the
    oldest supported TensorRT's limit.
    """
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    problems: list[str] = []
    inits = {t.name: t for t in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    inp = {i.name: i for i in g.input if i.name not in inits}
    shape: list[Any] = []
    if set(inp) != {"image"}:
        problems.append(f"inputs {sorted(inp)}, expected ['image']")
    else:
        t = inp["image"].type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        if t.elem_type != onnx.TensorProto.FLOAT:
            problems.append(f"input 'image' elem_type {t.elem_type}, expected float32")
        if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape) or shape[:2] != [1, 3]:
            problems.append(f"input 'image' shape {shape}, expected static [1, 3, S, S]")
    outs = [o.name for o in g.output]
    if outs != ["anomaly_map", "score"]:
        problems.append(f"outputs {outs}, expected ['anomaly_map', 'score']")
    ops: dict[str, int] = {}
    for n in g.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    q_types, nonzero_zp = set(), []
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            zp = value(n.input[2])
            if zp is not None:
                q_types.add(str(zp.dtype))
                if np.any(zp != 0):
                    nonzero_zp.append(n.name)
        if n.op_type == "TopK":
            k = value(n.input[1])
            if k is not None and int(np.asarray(k).reshape(-1)[0]) > TRT_MAX_TOPK:
                problems.append(f"TopK {n.name} k={int(np.asarray(k).reshape(-1)[0])} > {TRT_MAX_TOPK}")
    if nonzero_zp:
        problems.append(f"{len(nonzero_zp)} Q/DQ nodes with non-zero zero points (TensorRT needs symmetric), "
                        f"e.g. {nonzero_zp[0]}")
    if q_types - {"int8"}:
        problems.append(f"Q/DQ zero-point types {sorted(q_types)}, TensorRT explicit quantization needs int8")
    opset = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {"file": path.name, "input_shape": shape, "outputs": outs, "opset": opset,
            "qdq_nodes": ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0),
            "zero_point_types": sorted(q_types), "ops": dict(sorted(ops.items())), "problems": problems}


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Image AUROC (Mann-Whitney, ties count half); None without both classes."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def _rank(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def compare(got: np.ndarray, ref: np.ndarray, got_maps: np.ndarray, ref_maps: np.ndarray, labels: np.ndarray,
            thr_got: float, thr_ref: float | None) -> dict[str, Any]:
    """Scores and maps of the engine (after the bundle's output affine) against ONNX Runtime FP32.

    Verdicts use each side's own threshold (the INT8 bundle carries one re-computed for INT8); labels are -1 for
    golden inputs, which count in correlation and flips but not in AUROC.
    """
    lab = labels >= 0
    a_ref, a_got = auroc(ref[lab], labels[lab]), auroc(got[lab], labels[lab])
    flips = None if thr_ref is None else int(((got > thr_got) != (ref > thr_ref)).sum())
    return {"n": len(got), "pearson": float(np.corrcoef(got, ref)[0, 1]),
            "spearman": float(np.corrcoef(_rank(got), _rank(ref))[0, 1]),
            "score_abs_max": float(np.abs(got - ref).max()),
            "map_abs_max": float(np.abs(got_maps - ref_maps).max()),
            "verdict_flips": flips, "threshold": thr_got, "threshold_fp32": thr_ref,
            "auroc_fp32": a_ref, "auroc": a_got,
            "auroc_drop": None if a_ref is None or a_got is None else a_ref - a_got}


def _inputs(bundle: Any, images: Path) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    from edge.contract import load_input

    g = np.load(bundle.root / bundle.manifest.golden.inputs)
    names = [f"golden:{k}" for k in sorted(g)]
    xs = [np.ascontiguousarray(g[k]) for k in sorted(g)]
    labels = [-1] * len(xs)
    for p in sorted(q for q in images.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES):
        names.append(str(p.relative_to(images)))
        xs.append(load_input(p, bundle.size_px))
        labels.append(0 if p.parent.name == "good" else 1)  # MVTec-style folders: good/ vs any defect folder
    return names, xs, np.asarray(labels)


def _fp32_graph(bundle: Any) -> Path:
    """The FP32 graph of the bundle: model_fp32.onnx beside an INT8 QDQ artifact, else the artifact itself."""
    side = bundle.root / "model_fp32.onnx"
    return side if side.is_file() else bundle.artifact


def _latency(backend: Any, x: np.ndarray, runs: int) -> dict[str, float]:
    for _ in range(20):
        backend.infer(x)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        backend.infer(x)
        t.append((time.perf_counter() - t0) * 1e3)
    return {"runs": runs, "median_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)),
            "min_ms": float(np.min(t))}


def check_bundle(path: Path, images: Path, cache: Path, runs: int, thr_fp32: float | None,
                 dry_run: bool) -> dict[str, Any]:
    """Every check for one jetson bundle; TensorRT steps are skipped (and said so) on a dry run."""
    from edge.backends import create_backend
    from edge.backends.tensorrt import trtexec_command
    from edge.bundle import load_bundle, self_test
    from edge.errors import BundleError

    b = load_bundle(path)
    precision = "int8" if b.manifest.precision == "int8" else "fp16"
    row: dict[str, Any] = {"bundle": path.name, "precision": precision, "artifact": b.manifest.artifact,
                           "onnx": onnx_checks(b.artifact),
                           "trtexec": " ".join(trtexec_command(b.artifact, cache / "model.engine", precision,
                                                               cache / "timing.cache"))}
    _, xs, labels = _inputs(b, images)
    ref = create_backend("onnxruntime", _fp32_graph(b), "cpu")
    ref_out = [ref.infer(x) for x in xs]
    ref.close()
    ref_s = np.asarray([p.score for p in ref_out])
    ref_m = np.stack([p.anomaly_map for p in ref_out])
    if dry_run:
        # the graph TensorRT would be given, run in ONNX Runtime: the baseline the engine must stay close to
        qdq = create_backend("onnxruntime", b.artifact, "cpu")
        out = [b.affine.apply(qdq.infer(x)) for x in xs]
        qdq.close()
        row["engine"] = "not built: dry run (no TensorRT)"
        row["vs_fp32_of_the_onnx_given_to_tensorrt_in_ort"] = compare(
            np.asarray([p.score for p in out]), ref_s, np.stack([p.anomaly_map for p in out]), ref_m, labels,
            b.threshold, thr_fp32)
        return row
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "deploy.cli", "build-engine", str(path), "--cache-dir", str(cache)],
                       check=False, capture_output=True, text=True)
    row["build"] = {"exit_code": r.returncode, "seconds": round(time.perf_counter() - t0, 1),
                    "output": (r.stdout + r.stderr).strip().splitlines()[-5:]}
    if r.returncode != 0:
        return row
    trt = create_backend("tensorrt", b.artifact, "auto", cache, 0)
    row["engine"] = trt.info.extra
    row["runtime"] = f"tensorrt {trt.info.version} on {trt.info.device}"
    try:
        row["selftest"] = self_test(b, trt)
    except BundleError as err:
        row["selftest"] = {"passed": False, "error": str(err)}
    out = [b.affine.apply(trt.infer(x)) for x in xs]
    row["vs_fp32"] = compare(np.asarray([p.score for p in out]), ref_s, np.stack([p.anomaly_map for p in out]), ref_m,
                             labels, b.threshold, thr_fp32)
    row["latency_batch1"] = _latency(trt, xs[0], runs)
    trt.close()
    return row


def main(argv: list[str] | None = None) -> int:
    from bench.common import machine, save, table
    from edge.bundle import load_bundle
    from edge.errors import EdgeError

    ap = argparse.ArgumentParser(prog="python -m bench.trt", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", type=Path, nargs="+", metavar="BUNDLE", help="edge-deploy --target jetson bundles")
    ap.add_argument("--images", type=Path, required=True, help="test images: good/ and defect folders (recursive)")
    ap.add_argument("--cache-dir", type=Path, default=Path("bench-out/trt/cache"), help="engines and timing cache")
    ap.add_argument("--runs", type=int, default=200, help="timed inferences at batch 1 (after 20 warm-up)")
    ap.add_argument("--fp32-threshold", type=float,
                    help="FP32 threshold for verdict flips (default: the threshold of a given FP16 bundle)")
    ap.add_argument("--dry-run", action="store_true", help="no TensorRT: check the graphs and the ORT side only")
    ap.add_argument("--out", type=Path, default=Path("bench-out/trt"))
    a = ap.parse_args(argv)
    if not a.images.is_dir():
        ap.error(f"--images {a.images}: not a folder")
    bundles = []
    for p in a.bundles:
        try:
            b = load_bundle(p)
        except EdgeError as err:
            ap.error(str(err))
        if b.runtime != "tensorrt":
            ap.error(f"{p}: bundle runtime is {b.runtime}; build one with edge-deploy --target jetson")
        bundles.append(b)
    thr_fp32 = a.fp32_threshold
    if thr_fp32 is None:
        # an FP16 bundle's threshold is the FP32 model's own (it carries no output affine)
        thr_fp32 = next((b.threshold for b in bundles if b.manifest.precision != "int8"), None)
    trt_version = None
    if not a.dry_run:
        try:
            import tensorrt

            trt_version = tensorrt.__version__
        except ImportError as err:
            print(f"bench.trt: error: tensorrt is not importable ({err}); run on the GPU machine, or --dry-run",
                  file=sys.stderr)
            return 1
    rows = [check_bundle(p, a.images, a.cache_dir, a.runs, thr_fp32, a.dry_run) for p in a.bundles]
    payload = {"bench": "trt", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "host": machine(), "tensorrt": trt_version, "dry_run": a.dry_run,
               "note": "dry run: TensorRT was not run; figures are ONNX Runtime on the graph TensorRT is given"
               if a.dry_run else None, "results": rows}
    save(a.out / ("trt_dry_run.json" if a.dry_run else "trt.json"), payload)
    key = "vs_fp32_of_the_onnx_given_to_tensorrt_in_ort" if a.dry_run else "vs_fp32"
    flat = []
    for r in rows:
        c = r.get(key) or {}
        lat = r.get("latency_batch1") or {}
        flat.append({"bundle": r["bundle"], "precision": r["precision"],
                     "engine": "dry run" if a.dry_run else ("built" if r.get("build", {}).get("exit_code") == 0
                                                           else "FAILED"),
                     "selftest": "-" if "selftest" not in r else ("ok" if r["selftest"]["passed"] else "FAIL"),
                     "onnx": "ok" if not r["onnx"]["problems"] else "; ".join(r["onnx"]["problems"]),
                     "pearson": c.get("pearson"), "spearman": c.get("spearman"), "flips": c.get("verdict_flips"),
                     "auroc_drop": c.get("auroc_drop"), "median_ms": lat.get("median_ms"), "p99_ms": lat.get("p99_ms")})
    print(("DRY RUN: TensorRT not run; parity is ONNX Runtime on the graph TensorRT is given\n" if a.dry_run else
           f"TensorRT {trt_version}\n") + table(flat, list(flat[0])))
    print(f"wrote {a.out}")
    failed = any(r["onnx"]["problems"] for r in rows) or (not a.dry_run and any(
        r.get("build", {}).get("exit_code") != 0 or not r.get("selftest", {}).get("passed") for r in rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
