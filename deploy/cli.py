"""`edge-deploy --target jetson|intel-npu|arm|cpu RUN --out BUNDLE`, and `verify`, `inspect`, `build-engine`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from deploy.targets import TARGETS, Target
from edge.contract import QuantResult

__all__ = ["main"]

_SUBCOMMANDS = ("verify", "inspect", "build-engine", "keygen")


def _quantized(run: Path, qruntime: str, max_drop: float, device: str,
               max_far_increase: float | None = None) -> QuantResult:
    """The run's INT8 result for a runtime, quantized with edge-quantize's defaults for what is not given.

    An existing artifact is reused only when quant.json's source (SHA-256 of model.onnx, of the calibration
    and gate images, and the settings) matches what quantizing now would record; otherwise it is re-made and
    one line says why. A folder of an older spelling of the runtime (quantized/ort/) is not read: the runtime
    counts as not yet quantized. A quant.json that does not fit the contract (or is from a newer version) is
    refused with one line naming it.
    """
    from edge.contract import read_quant_result
    from quantize.cli import MAX_CALIB, MIN_SPEARMAN, quantize_run
    from quantize.gate import MAX_FAR_INCREASE
    from quantize.provenance import expected_source, stale_reason

    far_up = MAX_FAR_INCREASE if max_far_increase is None else max_far_increase
    qdir = run / "quantized" / qruntime
    qjson = qdir / "quant.json"
    if qjson.is_file():
        res = read_quant_result(qjson)
        expected = expected_source(run, qruntime, device=device, max_drop=max_drop, max_far_increase=far_up,
                                   max_calib=MAX_CALIB, min_spearman=MIN_SPEARMAN)
        reason = stale_reason(res, qdir, expected)
        if reason is None:
            print(f"using existing {qruntime} INT8 artifact in {qdir}")
            return res
        print(f"{qdir} is stale: {reason}; re-quantizing")
    return quantize_run(run, qruntime, max_drop, device=device, max_far_increase=far_up)


def _int8(run: Path, target: Target, max_drop: float, max_far_increase: float, x: np.ndarray
          ) -> tuple[str, QuantResult, dict[str, float], list[str]]:
    """The runtime an INT8 bundle of target uses and its quant.json, the latencies measured here (targets with
    several runtimes: the fastest that passed its gate is used) and the runtimes whose gate refused them."""
    from deploy.bundle import measure_latency
    from quantize.errors import GateFailed
    from quantize.gate import gate_failure
    from quantize.runtimes import quantizer

    if len(target.runtimes) == 1:
        (runtime,) = target.runtimes
        quant = _quantized(run, runtime, max_drop, target.quantize_device, max_far_increase)
        if not quant.gate.passed:
            raise GateFailed(f"{runtime} INT8 {gate_failure(quant.gate.model_dump())}")
        return runtime, quant, {}, []
    options: dict[str, QuantResult] = {}
    measured: dict[str, float] = {}
    failures: list[str] = []
    refused: list[str] = []
    for rt in target.runtimes:
        q = _quantized(run, rt, max_drop, target.quantize_device, max_far_increase)
        if q.gate.passed:
            measured[rt] = measure_latency(quantizer(rt).backend, run / "quantized" / rt / q.artifact, x)
            options[rt] = q
        else:
            why = gate_failure(q.gate.model_dump())
            failures.append(f"{rt}: {why}")
            refused.append(rt)
            print(f"{rt} INT8 FAILED its accuracy gate and is not used: {why}")
    if not options:
        raise GateFailed("no INT8 artifact passed the accuracy gate (" + " | ".join(failures) + ")")
    runtime = min(measured, key=measured.__getitem__)
    print("measured INT8 latency here: " + ", ".join(f"{k} {v:.1f} ms" for k, v in measured.items())
          + f" -> {runtime}")
    return runtime, options[runtime], measured, refused


def _build(a: argparse.Namespace) -> int:
    from deploy.bundle import build_bundle
    from edge.contract import EdgeError, load_input, read_model_card
    from quantize.runtimes import quantizer
    from training.inference import load_images  # noqa: F401 - the build runs on a workstation with training installed

    target: Target = TARGETS[a.target]
    run = Path(a.run)
    precision = a.precision or target.precisions[0]
    if precision not in target.precisions:
        raise SystemExit(f"edge-deploy: error: target {target.name} supports precisions {', '.join(target.precisions)}, not {precision}")
    if not (run / "model.json").is_file():
        raise SystemExit(f"edge-deploy: error: {run}: no model.json; train with `edge-train fit --out {run}` first")
    try:
        card = read_model_card(run)
    except EdgeError as err:
        raise SystemExit(f"edge-deploy: error: {err}") from err
    k = card.normalisation.score_k
    if target.max_topk is not None and k > target.max_topk:
        raise SystemExit(f"edge-deploy: error: the score averages the top {k} map pixels, {target.runtimes[0]} "
                         f"{target.min_runtime_version} allows TopK k <= {target.max_topk}; retrain with a smaller "
                         "params.score_top or input size")
    from training.data import open_dataset

    data = open_dataset(card.dataset)
    golden = [load_input(s.path, card.size_px) for s in (data.val[:2] + [t for t in data.test if t.label][:2])]
    quant = None
    measured: dict[str, float] = {}
    gate_refused: list[str] = []  # runtimes whose INT8 artifact failed its gate, said again at the end
    if precision == "int8":
        runtime, quant, measured, gate_refused = _int8(run, target, a.max_drop, a.max_far_increase, golden[0])
        qdir = run / "quantized" / runtime
        primary = qdir / quant.artifact
        extra = quantizer(runtime).fp32_copy
        artifacts = [primary] + ([qdir / extra] if extra else [])
    else:
        runtime = target.runtimes[0]
        primary = quantizer(runtime).float_artifact(run / "model.onnx", run / "quantized")
        artifacts = [primary]
    out = Path(a.out)
    sign_key = None
    if a.sign_key:
        from edge.signing import load_private_key

        sign_key = load_private_key(Path(a.sign_key))
    folder, archive, top = build_bundle(run, target, runtime, precision, artifacts, primary, quant, golden, out,
                                        a.bundle_version, sign_key)
    if measured:
        print(json.dumps({"cpu_runtime_choice": measured}))
    print(f"bundle: {folder}\narchive: {archive}")
    from edge.scoring import load_model

    if not target.builds_on_device:
        m = load_model(folder, "cpu", out.parent / ".cache", 0)
        print(f"self-test here: passed on {m.backend.info.runtime} ({m.backend.info.device})")
    for qrt in gate_refused:
        print(f"edge-deploy: warning: {qrt} INT8 failed its accuracy gate, so this bundle runs {runtime} "
              f"({run / 'quantized' / qrt / 'quant.json'}, gate.png beside it)", file=sys.stderr)
    _print_install(archive, top, target.builds_on_device, a.sign_key)
    return 0


def _print_install(archive: Path, top: str, builds_on_device: bool, sign_key: str | None) -> None:
    from deploy.bundle import DEVICE_ROOT, TRUSTED_KEY, install_steps

    key = TRUSTED_KEY if sign_key else None
    if sign_key:
        print(f"signed with {sign_key}; the device must trust its public key: copy "
              f"{Path(sign_key).with_suffix('.pub')} to DEVICE:{TRUSTED_KEY} (once)")
    else:
        print("unsigned: any bundle with matching hashes will run; sign with --sign-key (edge-deploy keygen)")
    print(f"next, on the device (first install and upgrade alike; the unit expects {DEVICE_ROOT}/venv):")
    print(f"  scp {archive} DEVICE:/tmp/")
    steps = install_steps(f"/tmp/{archive.name}", top, key=key, builds_engine=builds_on_device)
    print("  ssh DEVICE 'sudo sh -ec \"" + "; ".join(steps) + "\"'")
    print("  ssh DEVICE 'sudo systemctl reload-or-restart lineside'  # the daemon self-tests before it swaps")


def _keygen(a: argparse.Namespace) -> int:
    from edge.signing import generate_key

    priv, pub, fp = generate_key(Path(a.bundle))
    print(f"signing key {priv} (keep it on the build machine, mode 0600)\npublic key  {pub} (copy to each device)\n"
          f"fingerprint {fp}")
    print(f"next: edge-deploy --target cpu RUN --out BUNDLE --sign-key {priv}")
    return 0


def _verify(a: argparse.Namespace) -> int:
    from edge.bundle import load_bundle
    from edge.errors import BackendUnavailable
    from edge.scoring import load_model
    from edge.signing import Trust

    trust = Trust.from_files([Path(k) for k in a.key], None)
    b = load_bundle(Path(a.bundle), trust)
    print(f"hashes ok: {len(b.manifest.files)} files"
          + (f"; signature ok: key {b.signed_by}, bundle_version {b.version}" if b.signed_by else
             "; signature not checked (no --key)"))
    reference = b.manifest.golden.reference_runtime or b.runtime
    try:
        m = load_model(Path(a.bundle), a.device, Path(a.cache_dir), 0, trust)
        print(f"self-test passed on {m.backend.info.runtime} {m.backend.info.device} "
              f"(max rel diff {m.selftest['max_rel_diff']:.2e})")
    except BackendUnavailable as err:
        if reference == b.runtime:
            raise
        # the bundle's runtime is not here (TensorRT off the device): check its graph in the runtime its golden
        # scores were recorded with
        from edge.backends import create_backend
        from edge.bundle import self_test

        r = self_test(b, create_backend(reference, b.artifact, "cpu"))
        print(f"{b.runtime} unavailable here ({err}); graph self-test in {reference} passed "
              f"(max rel diff {r['max_rel_diff']:.2e})")
    return 0


def _inspect(a: argparse.Namespace) -> int:
    from edge.bundle import load_bundle

    b = load_bundle(Path(a.bundle))
    m = b.manifest
    rows = [("model", f"{m.model.name} ({m.model.family})"), ("created", m.created or "-"),
            ("target", m.target or "-"), ("runtime", f"{m.runtime} >= {m.min_runtime_version or 'any'}"),
            ("precision", m.precision), ("input", f"{m.input.size_px}x{m.input.size_px} {m.input.colour_order}"),
            ("threshold", f"{m.threshold:.5f}"), ("artifact", m.artifact), ("bundle id", b.digest),
            ("bundle version", str(m.bundle_version or "-")),
            ("signed", "yes (manifest.sig)" if (b.root / "manifest.sig").is_file() else "no"),
            ("data fingerprint", (m.training_data_fingerprint or "-")[:16]), ("tool", m.tool_version or "-")]
    g = m.quantization.gate if m.quantization else None
    if g is not None:
        rows.append(("INT8 gate", f"AUROC drop {g.image_auroc_drop}, spearman {g.spearman_scores}, "
                                  f"{'passed' if g.passed else 'FAILED'}"))
    # the runtime's own record of what the device needs (Backend.bundle_requirements; the NPU's, today)
    req = m.device_requirements
    if req:
        shapes = ", ".join(f"{k} {v}" for k, v in req["static_shapes"].items())
        rows += [("device", req["device"]), ("static shapes", shapes),
                 ("blob cache", f"{req['compiled_blob_cache']['layout']} (per runtime, device and driver version)"),
                 ("fallback", f"{req['fallback']['device']}: {req['fallback']['reported']}")]
    for k, v in rows:
        print(f"{k:<18} {v}")
    print("files:")
    for f, h in m.files.items():
        print(f"  {h[:12]}  {f}")
    return 0


def _build_engine(a: argparse.Namespace) -> int:
    from edge.backends.tensorrt import build_engine, trtexec_command
    from edge.bundle import load_bundle

    b = load_bundle(Path(a.bundle))
    on_device = [t.name for t in TARGETS.values() if t.builds_on_device]
    if b.manifest.target not in on_device:
        raise SystemExit(f"edge-deploy: error: bundle target is {b.manifest.target}; build-engine is for "
                         f"{'|'.join(on_device)} bundles")
    precision = "int8" if b.manifest.precision == "int8" else "fp16"
    cache = Path(a.cache_dir)
    if a.print_command:
        print(" ".join(trtexec_command(b.artifact, cache / "model.engine", precision, cache / "timing.cache", a.dla_core)))
        return 0
    path = build_engine(b.artifact, precision, cache, a.dla_core)
    print(f"engine: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from edge.contract import EdgeError
    from quantize.errors import QuantizeError
    from training.clihelp import DefaultsHelpFormatter
    from training.errors import TrainingError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _SUBCOMMANDS:
        p = argparse.ArgumentParser(prog=f"edge-deploy {argv[0]}", formatter_class=DefaultsHelpFormatter)
        if argv[0] == "keygen":
            p.add_argument("bundle", metavar="STEM", help="writes STEM.key (private) and STEM.pub")
        else:
            p.add_argument("bundle", help="bundle folder")
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        if argv[0] in ("verify", "build-engine"):
            p.add_argument("--cache-dir", default="/var/cache/lineside" if argv[0] == "build-engine" else ".lineside-cache",
                           help="where compiled models and engines are cached")
        if argv[0] == "verify":
            p.add_argument("--device", default="auto", help="backend device for the self-test")
            p.add_argument("--key", action="append", default=[], metavar="PUB",
                           help="trusted public key: the bundle must be signed by it (repeatable)")
        if argv[0] == "build-engine":
            p.add_argument("--dla-core", type=int, help="Jetson DLA core to build for (default: the GPU)")
            p.add_argument("--print-command", action="store_true", help="print the equivalent trtexec command")
        fn = {"verify": _verify, "inspect": _inspect, "build-engine": _build_engine, "keygen": _keygen}[argv[0]]
        a = p.parse_args(argv[1:])
    else:
        lines = "\n".join(f"  {t.name:<10} {t.summary}" for t in TARGETS.values())
        p = argparse.ArgumentParser(prog="edge-deploy", formatter_class=DefaultsHelpFormatter,
                                    description="Build a device bundle.", epilog=f"targets:\n{lines}\n\nalso: "
                                    "edge-deploy verify|inspect|build-engine BUNDLE, edge-deploy keygen STEM")
        p.add_argument("--target", required=True, choices=list(TARGETS), help="device family (list below)")
        p.add_argument("run", help="trained run folder")
        p.add_argument("--out", required=True, help="bundle folder to write (and OUT.tar.gz)")
        p.add_argument("--precision", choices=["int8", "fp16", "fp32"],
                       help="default: the target's first (int8 for every target)")
        from quantize.gate import MAX_DROP, MAX_FAR_INCREASE

        p.add_argument("--max-drop", type=float, default=MAX_DROP,
                       help="INT8 gate: largest image-AUROC / AUPRO drop vs FP32")
        p.add_argument("--max-far-increase", type=float, default=MAX_FAR_INCREASE,
                       help="INT8 gate: largest rise of the false-alarm rate at the threshold")
        p.add_argument("--sign-key", metavar="KEY", help="sign the bundle with this Ed25519 key (edge-deploy keygen)")
        p.add_argument("--bundle-version", type=int, metavar="N",
                       help="bundle version, must go up (default: UTC build time YYYYMMDDHHMMSS)")
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        a = p.parse_args(argv)
        fn = _build
    try:
        return fn(a)
    except (EdgeError, QuantizeError, TrainingError, FileNotFoundError) as err:
        if a.debug:
            raise
        print(f"edge-deploy: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
