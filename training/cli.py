"""`edge-train`: synthesize data, fit a model, evaluate a run, distil a PDN teacher."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]


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
              "train_minutes": state.meta.get("train_minutes"), "steps_done": state.meta.get("steps_done")}
    if arrays:
        report["plots"] = write_plots(arrays, state.threshold, out / "plots", f"{state.config.model}")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _print_report(report: dict[str, Any], out: Path) -> None:
    keys = ["image_auroc", "image_auroc_by_kind", "pixel_auroc", "aupro_0.3", "threshold", "false_alarm_rate", "miss_rate"]
    for k in keys:
        if k in report:
            print(f"  {k:<20} {report[k]}")
    print(f"report: {out / 'report.json'}  plots: {out / 'plots'}")


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
    cfg = load_fit_config(a.config, overrides)
    data = open_dataset(a.data, cfg.val_fraction, cfg.seed)
    out = Path(a.out)
    state = fit(cfg, data, out, resume=a.resume, progress=not a.quiet)
    onnx_path = export_onnx(state, out, load_images(data.val[:4], cfg.size_px))
    report = _report(state, data, out)
    print(f"model: {onnx_path}  threshold: {state.threshold:.4f} (good images, target false alarms {cfg.false_alarm_rate:.2%})")
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
    f.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
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
