"""Build a device bundle from a trained (and quantized) run: artifacts, manifest with hashes, golden
self-test data, a default daemon config and the systemd unit; plus a .tar.gz of the folder."""

from __future__ import annotations

import datetime as dt
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from deploy.targets import Target
from edge.backends import backend_class, create_backend
from edge.contract import (
    MANIFEST_FILE, BundleInput, BundleManifest, BundleModelInfo, BundleQuantization, Golden, OutputAffine,
    QuantResult, read_model_card, sha256_file,
)

__all__ = ["DEVICE_ROOT", "build_bundle", "default_bundle_version", "install_steps", "measure_latency",
           "unit_file"]

DEVICE_ROOT = "/opt/lineside"  # venv/, bundles/<name>-v<version>/ and the bundles/current link, all root-owned


def unit_file() -> Path:
    """The systemd unit copied into every bundle: package data of deploy (deploy/systemd links to systemd/)."""
    p = Path(__file__).resolve().parent / "systemd" / "lineside.service"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: systemd unit missing from the lineside installation (package data of "
                                "deploy); reinstall the lineside wheel")
    return p


def measure_latency(runtime: str, model: Path, x: np.ndarray, runs: int = 15) -> float:
    """Median latency in ms after warm-up (used to pick the CPU runtime)."""
    b = create_backend(runtime, model, "cpu")
    for _ in range(3):
        b.infer(x)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        b.infer(x)
        t.append((time.perf_counter() - t0) * 1e3)
    b.close()
    return float(np.median(t))


def _golden(runtime: str, model: Path, inputs: list[np.ndarray], out: Path, precision: str) -> Golden:
    """Record golden inputs and the outputs the bundle's runtime gives here."""
    from quantize.runtimes import quantizer

    # a runtime that cannot run here (TensorRT): the graph's output in the one that validates its artifacts is
    # the reference, and the device's kernels may differ more from it
    ref_runtime = quantizer(runtime).backend
    b = create_backend(ref_runtime, model, "cpu")
    scores = [b.infer(x).score for x in inputs]
    b.close()
    np.savez_compressed(out / "golden.npz", **{f"x{i}": x for i, x in enumerate(inputs)})
    tol = 1e-3 if precision == "fp32" else (0.05 if ref_runtime != runtime else 1e-2)
    return Golden(inputs="golden.npz", scores=scores, tolerance=tol, reference_runtime=ref_runtime)


def default_bundle_version() -> int:
    """UTC build time as YYYYMMDDHHMMSS: goes up with every build, readable, fits the daemon's rollback check."""
    return int(dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S"))


def install_steps(archive: str, top: str, root: str = DEVICE_ROOT, key: str | None = None,
                  builds_engine: bool = False) -> list[str]:
    """The shell steps that install a bundle archive on the device, first install and upgrade alike.

    The bundle is unpacked root-owned and read-only for the daemon (never into its writable state directory),
    verified (after its engine is built there, for targets that build on the device), then swapped in
    atomically by renaming a `current` symlink, and the daemon reloads it.
    """
    b = f"{root}/bundles"
    steps = [
        f"install -d -m 0755 {b}",
        f"rm -rf {b}/{top} && tar --no-same-owner --no-same-permissions -xzf {archive} -C {b}",
    ]
    if builds_engine:
        steps.append(f"{root}/venv/bin/edge-deploy build-engine {b}/{top} --cache-dir /var/cache/lineside")
    steps += [
        f"{root}/venv/bin/edge-deploy verify {b}/{top}" + (f" --key {key}" if key else ""),
        f"ln -sfn {top} {b}/current.new && mv -T {b}/current.new {b}/current",
    ]
    return steps


TRUSTED_KEY = "/etc/lineside/bundle-signing.pub"


def default_config(target: Target, runtime: str, signed: bool = False) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "bundle": f"{DEVICE_ROOT}/bundles/current",
        "state_dir": "/var/lib/lineside",
        "cache_dir": "/var/cache/lineside",
        "backend": {"device": target.device, "threads": 0},
        "mqtt": {"host": "localhost", "port": 1883, "protocol": "5", "prefix": "lineside", "line": "line1"},
        "stations": [{"name": "station1", "source": {"type": "folder", "path": "/var/lib/lineside/inbox"}}],
    }
    if signed:  # the device then runs only bundles signed by this key, never an older one
        cfg["trust"] = {"keys": [TRUSTED_KEY]}
    return cfg


def build_bundle(run: Path, target: Target, runtime: str, precision: str, artifacts: list[Path], primary: Path,
                 quant: QuantResult | None, golden_inputs: list[np.ndarray], out: Path,
                 bundle_version: int | None = None, sign_key: object | None = None) -> tuple[Path, Path, str]:
    """Write the bundle folder (signed with sign_key when given) and out.tar.gz.

    Returns the folder, the archive and the archive's top folder name (<out>-v<bundle_version>), which is what
    the device unpacks, so each version lands in a folder of its own.
    """
    from edge.signing import sign_manifest

    version = bundle_version or default_bundle_version()
    card = read_model_card(run)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for a in artifacts:
        shutil.copy2(a, out / a.name)
        if a.suffix == ".xml":
            shutil.copy2(a.with_suffix(".bin"), out / a.with_suffix(".bin").name)
    # device needs checked now, on the build machine (e.g. the NPU's static shapes), and recorded for inspection
    requirements = backend_class(runtime).bundle_requirements(out / primary.name, card.size_px, target.device)
    golden = _golden(runtime, out / primary.name, golden_inputs, out, precision)
    (out / "config.yaml").write_text(yaml.safe_dump(default_config(target, runtime, sign_key is not None),
                                                    sort_keys=False))
    shutil.copy2(unit_file(), out / "lineside.service")
    from training import __version__ as tool_version

    files = sorted(p for p in out.rglob("*") if p.is_file())
    manifest = BundleManifest(
        bundle_version=version,
        model=BundleModelInfo(family=card.family, name=card.model, variant=getattr(card, "variant", None),
                              version=card.created),
        input=BundleInput(size_px=card.size_px),
        threshold=quant.threshold if quant else card.threshold,
        output_affine=quant.output_affine if quant else OutputAffine(),
        normalisation=card.normalisation.model_dump(),
        precision=precision,
        target=target.name,
        runtime=runtime,
        min_runtime_version=target.min_runtime_version,
        artifact=primary.name,
        training_data_fingerprint=card.training_data_fingerprint,
        quantization=BundleQuantization(gate=quant.gate, calibration=quant.calibration) if quant else None,
        golden=golden,
        device_requirements=requirements,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        tool_version=tool_version,
        files={str(p.relative_to(out)): sha256_file(p) for p in files},
    )
    manifest.write(out / MANIFEST_FILE)
    if sign_key is not None:
        sign_manifest(out, sign_key)
    archive = out.with_name(out.name + ".tar.gz")
    top = f"{out.name}-v{version}"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(out, arcname=top)
    return out, archive, top
