"""Speed benchmark: batch-1 latency per model x runtime (PyTorch eager, ORT FP32/INT8, OpenVINO FP32/INT8,
LiteRT INT8 when installed), the INT8/FP32 ratios measured in the same run, and the machine's ceiling (a large
chain of 3x3 convolutions) per runtime and precision as GMAC/s.

    python -m bench.speed RUN [RUN ...] --runs 30 --out bench-out/speed

Runs without INT8 artifacts are quantized first with `edge-quantize` (gate figures come from quant.json).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.common import conv_gmac, machine, save, table
from edge.contract import read_quant_result


def _time(fn: Callable[[], Any], runs: int, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        t.append((time.perf_counter() - t0) * 1e3)
    return {"min_ms": float(np.min(t)), "median_ms": float(np.median(t)), "max_ms": float(np.max(t))}


CEILING = "4 x (3x3 conv 256->256 + ReLU) @64x64"


def _ceiling(runs: int, tmp: Path) -> dict[str, float]:
    """GMAC/s of a chain of 3x3 convolutions (CEILING) in each runtime and precision.

    A chain, not one layer: an INT8 network keeps activations INT8 between layers, so one layer with float
    input and output would charge the INT8 row a quantize/dequantize of its whole input and output.
    """
    import torch

    from edge.backends import create_backend
    from quantize.calib import CalibrationReader
    from quantize.runtimes.onnxruntime import quantize_qdq
    from quantize.runtimes.openvino import quantize_nncf

    class Chain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = torch.nn.Sequential(*[m for _ in range(4) for m in (torch.nn.Conv2d(256, 256, 3, padding=1),
                                                                        torch.nn.ReLU())])

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.c(image)
            return y[:, :1], y.amax(dim=(1, 2, 3))

    m = Chain().eval()
    x = torch.rand(1, 256, 64, 64)
    fp32 = tmp / "ceiling.onnx"
    torch.onnx.export(m, (x,), str(fp32), input_names=["image"], output_names=["anomaly_map", "score"], opset_version=17,
                      dynamo=False)
    reader = CalibrationReader([np.random.default_rng(i).random((1, 256, 64, 64), dtype=np.float32) for i in range(4)])
    ort_int8 = quantize_qdq(fp32, tmp / "ceiling_int8.onnx", reader, "minmax", "all")
    ov_int8 = quantize_nncf(fp32, tmp / "ceiling_int8.xml", reader)
    gmac = 4 * 256 * 256 * 9 * 64 * 64 / 1e9
    xn = x.numpy()
    out = {}
    with torch.no_grad():
        out["torch fp32"] = gmac / (_time(lambda: m(x), runs)["median_ms"] / 1e3)
    for name, rt, path in (("ort fp32", "onnxruntime", fp32), ("ort int8", "onnxruntime", ort_int8),
                           ("openvino fp32", "openvino", fp32), ("openvino int8", "openvino", ov_int8)):
        b = create_backend(rt, path, "cpu")
        out[name] = gmac / (_time(lambda: b.infer(xn), runs)["median_ms"] / 1e3)
    return out


def _artifacts(run: Path, max_drop: float, max_calib: int) -> dict[str, Path]:
    from quantize.cli import quantize_run
    from quantize.runtimes import quantizer
    from quantize.runtimes.openvino import convert_fp32

    arts = {"ort fp32": run / "model.onnx"}
    for rt, key in (("onnxruntime", "ort int8"), ("openvino", "openvino int8")):
        q = run / "quantized" / rt / "quant.json"
        if not q.is_file():
            quantize_run(run, rt, max_drop, max_calib=max_calib)
        arts[key] = run / "quantized" / rt / quantizer(rt).artifact
    arts["openvino fp32"] = convert_fp32(run / "model.onnx", run / "quantized" / "model_fp32.xml")
    return arts


def bench_run(run: Path, runs: int, max_drop: float, max_calib: int) -> list[dict[str, Any]]:
    import torch

    from edge.backends import create_backend
    from training.run import load_run

    state = load_run(run)
    size = state.model.size_px
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    xn = x.numpy()
    gmac = conv_gmac(state.model, size)
    rows = []
    with torch.no_grad():
        rows.append({"runtime": "torch fp32", **_time(lambda: state.model(x), runs)})
    for name, path in _artifacts(run, max_drop, max_calib).items():
        rt = "onnxruntime" if name.startswith("ort") else "openvino"
        b = create_backend(rt, path, "cpu")
        rows.append({"runtime": name, **_time(lambda: b.infer(xn), runs)})
        b.close()
    gates = {}
    for rt in ("onnxruntime", "openvino"):
        gates[rt] = read_quant_result(run / "quantized" / rt / "quant.json").gate
    med = {r["runtime"]: r["median_ms"] for r in rows}
    for r in rows:
        r.update({"model": f"{state.config.model}@{size}", "gmac": round(gmac, 2), "img_per_s": 1e3 / r["median_ms"],
                  "gmac_per_s": gmac / (r["median_ms"] / 1e3)})
        fam = r["runtime"].split()[0]
        if r["runtime"].endswith("int8"):
            r["int8_speedup"] = med[f"{fam} fp32"] / r["median_ms"]
            g = gates["onnxruntime" if fam == "ort" else "openvino"]
            r["auroc_drop"] = g.image_auroc_drop
            r["spearman"] = g.spearman_scores
    return rows


def branch_profile(path: Path, runs: int = 5) -> dict[str, float]:
    """Share of ONNX Runtime kernel time per model branch (node-name prefix), from ORT's profiler."""
    import collections
    import os

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.gettempdir()) / "lineside-prof")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(runs):
        sess.run(None, {"image": x})
    prof = Path(sess.end_profiling())
    events = json.loads(prof.read_text())
    os.remove(prof)
    per: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            parts = e["name"].split("/")
            # modules are lower-case path segments (/model/student/...); ops of the head are /model/Sub_3 etc.
            per[parts[2] if len(parts) > 3 and parts[1] == "model" and parts[2].islower() else "head"] += e["dur"]
    total = sum(per.values()) or 1
    return {k: round(v / total, 3) for k, v in per.most_common()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs_dirs", nargs="+", type=Path, metavar="RUN")
    ap.add_argument("--runs", type=int, default=30, help="timed runs per row (after 5 warm-up runs)")
    ap.add_argument("--max-drop", type=float, default=0.005)
    ap.add_argument("--max-calib", type=int, default=64, help="calibration images when a run must be quantized")
    ap.add_argument("--out", type=Path, default=Path("bench-out/speed"))
    a = ap.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        ceiling = _ceiling(a.runs, Path(tmp))
    for run in a.runs_dirs:
        rows += bench_run(run, a.runs, a.max_drop, a.max_calib)
    for r in rows:
        r["ceiling_share"] = r["gmac_per_s"] / ceiling[r["runtime"]]
        if r["runtime"].endswith("int8"):
            fam = r["runtime"].split()[0]
            # the most an INT8 graph can gain on this machine: the same run's ceiling ratio
            r["ceiling_int8_speedup"] = ceiling[r["runtime"]] / ceiling[f"{fam} fp32"]
    profiles = {}
    for run in a.runs_dirs:
        for name, path in (("ort fp32", run / "model.onnx"), ("ort int8", run / "quantized" / "onnxruntime" / "model_int8.onnx")):
            profiles[f"{run.name} {name}"] = branch_profile(path)
    save(a.out / "speed.json", {"machine": machine(), "ceiling": CEILING, "ceiling_gmac_per_s": ceiling, "rows": rows,
                                "ort_time_share_by_branch": profiles})
    print(f"ceiling ({CEILING}), GMAC/s: " + ", ".join(f"{k} {v:.1f}" for k, v in ceiling.items()))
    for k, v in profiles.items():
        print(f"ORT time by branch, {k}: " + ", ".join(f"{b} {share:.0%}" for b, share in v.items()))
    print(table(rows, ["model", "runtime", "min_ms", "median_ms", "max_ms", "img_per_s", "int8_speedup",
                       "ceiling_int8_speedup", "gmac_per_s", "ceiling_share", "auroc_drop", "spearman"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
