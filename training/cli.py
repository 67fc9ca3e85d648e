"""`edge-train`: synthesize data, fit a model, evaluate a run, distil a PDN teacher."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]

# what `edge-train fit` and the tools after it write into a run folder; --overwrite removes exactly these
RUN_OUTPUTS = ("config.yaml", "model.pt", "checkpoint.pt", "checkpoint.tmp", "model.onnx", "model.json",
               "train.json", "report.json", "plots", "quantized")


def _cmd_synth(a: argparse.Namespace) -> int:
    from training.synth import SynthSpec, write_synthetic

    spec = SynthSpec(size_px=a.size, n_train=a.n_train, n_val=a.n_val, n_test_good=a.n_test,
                     n_structural=a.n_test, n_logical=a.n_test, seed=a.seed)
    root = write_synthetic(a.out, spec, progress=True)
    print(f"wrote synthetic MVTec LOCO dataset to {root}")
    return 0


def _report(state: Any, data: Any, out: Path) -> dict[str, Any]:
    from training.evaluate import evaluate
    from training.report import write_plots

    report, arrays = evaluate(state, data)
    report = {"model": state.config.model, "dataset": str(data.root), "layout": data.layout,
              "training_data_fingerprint": state.fingerprint, **report,
              "false_alarm_rate_target": state.config.false_alarm_rate, "threshold_basis": _threshold_basis(state),
              "train_minutes": state.meta.get("train_minutes"), "steps_done": state.meta.get("steps_done")}
    if arrays:
        report["plots"] = write_plots(arrays, state.threshold, out / "plots", f"{state.config.model}")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _threshold_basis(state: Any) -> dict[str, Any]:
    """The run's threshold basis (runs trained before it was recorded: from their held-out count)."""
    from training.report import threshold_basis

    basis = state.meta.get("threshold_basis")
    return basis or threshold_basis(int(state.meta.get("n_val", 0)), state.config.false_alarm_rate)


def _note_threshold_basis(out: Path, basis: dict[str, Any]) -> None:
    """Add the threshold basis to model.json, beside the threshold it qualifies (export writes the rest)."""
    path = out / "model.json"
    meta = json.loads(path.read_text())
    meta["threshold_basis"] = basis
    path.write_text(json.dumps(meta, indent=2))


def _print_report(report: dict[str, Any], out: Path) -> None:
    keys = ["image_auroc", "image_auroc_by_kind", "pixel_auroc", "aupro_0.3", "threshold", "false_alarm_rate", "miss_rate"]
    for k in keys:
        if k not in report:
            continue
        v = report[k]
        if k == "false_alarm_rate" and v is not None:
            v = (f"{v} ({v:.1%} of {report['n_good']} good test images; "
                 f"target {report['false_alarm_rate_target']:.2%})")
        print(f"  {k:<20} {v}")
    print(f"report: {out / 'report.json'}  plots: {out / 'plots'}")


def _refuse_reuse(out: Path, resume: bool, overwrite: bool) -> str | None:
    """Why fit must not write into out (one line naming the fix), or None."""
    if resume or overwrite or not out.is_dir():
        return None
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    if not found:
        return None
    listed = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
    return (f"{out} is not empty ({listed}); pass --resume to continue its training, --overwrite to start clean "
            "(removes its model, reports and quantized/ artifacts), or a new --out folder")


def _clear_run(out: Path) -> list[str]:
    """Remove what an earlier run wrote into out (RUN_OUTPUTS only); returns the names removed."""
    import shutil

    removed = []
    for name in RUN_OUTPUTS:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


def _cmd_fit(a: argparse.Namespace) -> int:
    from training.config import load_fit_config
    from training.data import open_dataset
    from training.export import export_onnx
    from training.loop import fit, load_images

    params: dict[str, Any] = {}
    if a.teacher:
        params["teacher"] = a.teacher
    if a.margin:
        params["margin"] = {"enabled": True, "mode": a.margin}
    if a.map_weights:
        params["map_weights"] = a.map_weights
    overrides = {"model": a.model, "steps": a.steps, "size_px": a.size, "batch_size": a.batch_size,
                 "max_minutes": a.max_minutes, "seed": a.seed, "false_alarm_rate": a.far, "params": params}
    out = Path(a.out)
    refusal = _refuse_reuse(out, a.resume, a.overwrite)
    if refusal:
        print(f"edge-train: error: {refusal}", file=sys.stderr)
        return 2
    cfg = load_fit_config(a.config, overrides)
    data = open_dataset(a.data, cfg.val_fraction, cfg.seed)
    if a.overwrite and out.is_dir():
        removed = _clear_run(out)
        if removed:
            print(f"--overwrite: removed the earlier run's {', '.join(removed)} from {out}")
    state = fit(cfg, data, out, resume=a.resume, progress=not a.quiet)
    onnx_path = export_onnx(state, out, load_images(data.val[:4], cfg.size_px))
    basis = _threshold_basis(state)
    _note_threshold_basis(out, basis)
    report = _report(state, data, out)
    print(f"model: {onnx_path}  threshold: {state.threshold:.4f} (from {basis['n_good_images']} held-out good "
          f"images, target false alarms {cfg.false_alarm_rate:.2%})")
    if basis["warning"]:
        print(f"  warning: {basis['warning']}")
    _print_report(report, out)
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from training.data import open_dataset
    from training.loop import load_run

    state = load_run(Path(a.run))
    data = open_dataset(a.data, state.config.val_fraction, state.config.seed)
    report = _report(state, data, Path(a.run))
    _print_report(report, Path(a.run))
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from training.export import export_onnx
    from training.loop import load_run

    state = load_run(Path(a.run))
    print(f"wrote {export_onnx(state, Path(a.run))}")
    _note_threshold_basis(Path(a.run), _threshold_basis(state))
    return 0


def _cmd_distill(a: argparse.Namespace) -> int:
    from training.distill import DistillConfig, distill_teacher

    cfg = DistillConfig(size=a.size, backbone=a.backbone, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                        seed=a.seed, size_px=a.size_px, pool=a.pool, workers=a.workers, max_minutes=a.max_minutes)
    distill_teacher(cfg, Path(a.out), [Path(d) for d in a.data], resume=a.resume)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from training.models import MODELS

    p = argparse.ArgumentParser(prog="edge-train", description="Train teacher-student anomaly models on good images.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="write a synthetic dataset (MVTec LOCO layout)")
    s.add_argument("out")
    s.add_argument("--size", type=int, default=256)
    s.add_argument("--n-train", type=int, default=60)
    s.add_argument("--n-val", type=int, default=20)
    s.add_argument("--n-test", type=int, default=30, help="good, structural and logical test images each")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=_cmd_synth)

    f = sub.add_parser("fit", help="train a model on good images, calibrate, evaluate and export to ONNX")
    f.add_argument("--data", required=True, help="dataset folder (plain folder, MVTec AD or MVTec LOCO layout)")
    f.add_argument("--model", choices=sorted(MODELS), default=None)
    f.add_argument("--teacher", choices=["lite0", "lite1", "lite2", "pdn"], default=None)
    f.add_argument("--margin", choices=["truncate", "hinge"], default=None, help="enable the DFSC margin constraint")
    f.add_argument("--map-weights", type=float, nargs=3, metavar=("ST", "AE", "GAUSS"), default=None,
                   help="EfficientAD map weights; texture products without logical constraints: 1 0 2")
    f.add_argument("--config", help="YAML config; flags override it")
    f.add_argument("--out", required=True, help="run folder")
    f.add_argument("--steps", type=int)
    f.add_argument("--size", type=int, help="input size in pixels")
    f.add_argument("--batch-size", type=int)
    f.add_argument("--seed", type=int)
    f.add_argument("--far", type=float, help="target false-alarm rate for the threshold (default 0.005)")
    f.add_argument("--max-minutes", type=float,
                   help="training time budget; the lr drop and AST's teacher/student phases are scheduled within it")
    again = f.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
    again.add_argument("--overwrite", action="store_true",
                       help="start clean in a used --out folder: removes its model, reports and quantized/ "
                            "artifacts (without --resume or --overwrite, fit refuses a non-empty folder)")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.set_defaults(fn=_cmd_fit)

    e = sub.add_parser("eval", help="evaluate a trained run on a labelled dataset")
    e.add_argument("run")
    e.add_argument("--data", required=True)
    e.set_defaults(fn=_cmd_eval)

    x = sub.add_parser("export", help="re-export a trained run to ONNX")
    x.add_argument("run")
    x.set_defaults(fn=_cmd_export)

    d = sub.add_parser("distill-teacher", help="distil a PDN teacher from EfficientNet-Lite features")
    d.add_argument("--out", required=True, help="weights file to write")
    d.add_argument("--size", choices=["s", "m", "tiny"], default="s")
    d.add_argument("--backbone", choices=["lite0", "lite1", "lite2"], default="lite0")
    d.add_argument("--data", nargs="*", default=[], help="folders of extra images (product images, photos)")
    d.add_argument("--steps", type=int, default=60000)
    d.add_argument("--batch-size", type=int, default=16)
    d.add_argument("--lr", type=float, default=1e-4)
    d.add_argument("--size-px", type=int, default=256)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--pool", type=int, default=2048, help="procedural/photo images generated up front (uint8 on the device)")
    d.add_argument("--workers", type=int, default=0, help="processes that generate the pool (0: one per core)")
    d.add_argument("--max-minutes", type=float)
    d.add_argument("--resume", action="store_true")
    d.set_defaults(fn=_cmd_distill)
    return p


def main(argv: list[str] | None = None) -> int:
    from training.errors import TrainingError

    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except TrainingError as err:
        if args.debug:
            raise
        print(f"edge-train: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
