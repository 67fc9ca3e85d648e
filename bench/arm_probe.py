"""Scores a bundle's golden inputs and a folder of frames with the edge package only (no torch, no bench imports),
so the same file runs on the x86 host and inside the emulated aarch64 userland: `python arm_probe.py BUNDLE
FRAMES OUT.npz` writes every map and score plus OUT.json (machine, runtime, self-test, CPU features)."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "probe"]

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _hwcaps() -> dict[str, Any]:
    """The CPU features the runtime's kernel dispatch sees (AT_HWCAP/AT_HWCAP2 on Linux aarch64)."""
    if platform.machine() != "aarch64":
        return {}
    import ctypes

    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    hw, hw2 = libc.getauxval(16), libc.getauxval(26)
    # bit positions from the kernel's arch/arm64/include/uapi/asm/hwcap.h
    return {"asimd": bool(hw >> 1 & 1), "asimddp": bool(hw >> 20 & 1), "sve": bool(hw >> 22 & 1),
            "i8mm": bool(hw2 >> 13 & 1), "bf16": bool(hw2 >> 14 & 1)}


def probe(bundle_dir: Path, frames: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load and self-test the bundle as the daemon does (a failed self-test is recorded, not raised), then score
    the golden inputs and every frame file."""
    from edge.backends import create_backend
    from edge.bundle import load_bundle, self_test
    from edge.contract import load_image, to_input
    from edge.errors import BundleError
    from edge.postprocess import judge

    bundle = load_bundle(bundle_dir)
    backend = create_backend(bundle.runtime, bundle.artifact, "cpu", Path("/tmp/lineside-arm-probe-cache"), 0)
    try:
        selftest: dict[str, Any] = self_test(bundle, backend)
    except BundleError as err:  # measured, not hidden: the parity figures below say by how much
        selftest = {"passed": False, "error": str(err)}
    affine, size, thr = bundle.affine, bundle.size_px, bundle.threshold
    golden = np.load(bundle.root / bundle.manifest.golden.inputs)
    expected = np.asarray(bundle.manifest.golden.scores, np.float64)
    items: list[tuple[str, np.ndarray]] = [(f"golden:x{i}", np.ascontiguousarray(golden[f"x{i}"]))
                                           for i in range(len(expected))]
    paths = sorted(p for p in frames.rglob("*") if p.suffix.lower() in FRAME_SUFFIXES) if frames.is_dir() else []
    # the daemon's own path: decode with the size hint, resize, scale; then affine and threshold
    items += [(str(p.relative_to(frames)), to_input(load_image(p, size_hint=size), size)) for p in paths]
    names, scores, maps, outcomes = [], [], [], []
    raw_golden = []
    for name, x in items:
        raw = backend.infer(x)
        if name.startswith("golden:"):
            raw_golden.append(raw.score)
        pred = affine.apply(raw)
        names.append(name)
        scores.append(pred.score)
        maps.append(np.asarray(pred.anomaly_map, dtype=np.float32))
        outcomes.append(judge(pred, thr).outcome)
    # self_test's own measure (relative to max(1, |expected|)), kept when the self-test fails too
    diff = np.abs(np.asarray(raw_golden) - expected) / np.maximum(1.0, np.abs(expected))
    selftest["golden_max_rel_diff"] = float(diff.max())
    info = {"machine": platform.machine(), "python": platform.python_version(),
            "runtime": backend.info.runtime, "runtime_version": backend.info.version,
            "device": backend.info.device, "selftest": selftest, "threshold": thr,
            "golden_tolerance": bundle.manifest.golden.tolerance,
            "precision": bundle.manifest.precision, "hwcaps": _hwcaps(),
            "torch_importable": _importable("torch"), "numpy": np.__version__}
    backend.close()
    arrays = {"names": np.asarray(names), "scores": np.asarray(scores, np.float64), "maps": np.stack(maps),
              "outcomes": np.asarray(outcomes)}
    return arrays, info


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def main(argv: list[str] | None = None) -> int:
    a = sys.argv[1:] if argv is None else argv
    if len(a) != 3:
        print("usage: arm_probe.py BUNDLE FRAMES OUT.npz", file=sys.stderr)
        return 2
    arrays, info = probe(Path(a[0]), Path(a[1]))
    out = Path(a[2])
    np.savez(out, **arrays)
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
