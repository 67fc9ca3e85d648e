"""`edge-train`: synthesize data, fit a model, evaluate a run, distil a PDN teacher."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]

# what `edge-train fit` and the tools after it write into a run folder; --overwrite removes exactly these
RUN_OUTPUTS = ("config.yaml", "model.pt", "checkpoint.pt", "checkpoint.tmp", "model.onnx", "model.json",
               "train.json", "report.json", "plots", "quantized", "evals")


def _cmd_synth(a: argparse.Namespace) -> int:
    from training.synth import SynthSpec, write_synthetic

    spec = SynthSpec(size_px=a.size, n_train=a.n_train, n_val=a.n_val, n_test_good=a.n_test,
                     n_structural=a.n_test, n_logical=a.n_test, seed=a.seed)
    root = write_synthetic(a.out, spec, progress=True)
    print(f"wrote synthetic MVTec LOCO dataset to {root}")
    print(f"next: edge-train fit --data {root} --out runs/a")
    return 0


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
    int8 = {k: v for k, v in report.get("bundle_thresholds", {}).items() if k != "fp32"}
    if int8:
        print("  INT8 bundle thresholds " + ", ".join(f"{k.removeprefix('int8 ')} {v:.4f}" for k, v in int8.items()))
    if "note" in report:
        print(f"  {report['note']}")
    print(f"report: {out / 'report.json'}" + (f"  plots: {out / 'plots'}" if report.get("plots") else ""))


def _next_deploy(run: Path) -> str:
    """The hint after a run is trained or evaluated: build a bundle (edge-deploy quantizes and gates INT8)."""
    return (f"next: edge-deploy --target cpu {run} --out bundles/{run.name}   (INT8 alone first: "
            f"edge-quantize {run} --runtime onnxruntime)")


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
    from training.pipeline import train_run

    params: dict[str, Any] = {}
    if a.teacher:
        params["teacher"] = a.teacher
    if a.teacher_weights:
        params["teacher_weights"] = a.teacher_weights
    if a.margin:
        params["margin"] = {"enabled": True, "mode": a.margin}
    if a.map_weights:
        params["map_weights"] = a.map_weights
    overrides = {"recipe": a.recipe, "model": a.model, "steps": a.steps, "size_px": a.size, "batch_size": a.batch_size,
                 "max_minutes": a.max_minutes, "seed": a.seed, "false_alarm_rate": a.far, "params": params}
    out = Path(a.out)
    refusal = _refuse_reuse(out, a.resume, a.overwrite)
    if refusal:
        print(f"edge-train: error: {refusal}", file=sys.stderr)
        return 2
    recorded = _recorded_recipe(out) if a.resume and not a.recipe else None
    if recorded:  # a resumed run keeps the recipe it started with: auto's choice could differ on changed data
        overrides["recipe"] = recorded[0]
    cfg = load_fit_config(a.config, overrides, data=a.data)
    if recorded:
        cfg = cfg.model_copy(update={"recipe_choice": recorded[1]})
        print(f"--resume: the run's recipe, {cfg.recipe}")
    elif cfg.recipe_choice:
        print(_describe_choice(cfg.recipe_choice))
    data = open_dataset(a.data, cfg.val_fraction, cfg.seed)
    if a.overwrite and out.is_dir():
        removed = _clear_run(out)
        if removed:
            print(f"--overwrite: removed the earlier run's {', '.join(removed)} from {out}")
    result = train_run(cfg, data, out, resume=a.resume, progress=not a.quiet)
    state, onnx_path, report = result.state, result.onnx_path, result.report
    basis = state.threshold_basis()
    print(f"model: {onnx_path}  threshold: {state.threshold:.4f} (from {basis['n_good_images']} held-out good "
          f"images, target false alarms {cfg.false_alarm_rate:.2%})")
    if basis["warning"]:
        print(f"  warning: {basis['warning']}")
    print(_describe_fusion(state.meta.get("fusion") or {}))
    if state.meta.get("budget"):
        print(_describe_budget(state.meta["budget"], state.meta))
    _print_report(report, out)
    print(_next_deploy(out))
    return 0


def _describe_budget(b: dict[str, Any], meta: dict[str, Any]) -> str:
    """What a --max-minutes budget bought (train.json's `budget`), in one or two lines."""
    batch = f"batch {b['batch_size']}" + (f" (the recipe's {b['recipe_batch_size']}, traded for steps)"
                                          if b["batch_size"] != b["recipe_batch_size"] else "")
    line = (f"budget {b['max_minutes']:g} min: the fit took {b['total_min']:.1f} — {b['before_train_min']:.1f} images "
            f"and teacher features, {meta['train_minutes']:.1f} training ({meta['steps_done']} steps at {batch}), "
            f"{b['after_train_min']:.1f} calibration")
    check = meta.get("selection_check") or {}
    notes = [b.get("short"), check.get("note")]
    return line + "".join(f"\n  note: {n}" for n in notes if n)


def _recorded_recipe(out: Path) -> tuple[str, dict[str, Any] | None] | None:
    """The recipe (and auto's evidence) a run folder's config.yaml records, if it records one."""
    from edge.contract import read_document
    from training.errors import TrainConfigError

    path = out / "config.yaml"
    if not path.is_file():
        return None
    saved = read_document(path, "yaml", TrainConfigError, "run config")
    if not isinstance(saved, dict):
        return None
    return str(saved.get("recipe") or "objects"), saved.get("recipe_choice")  # no recipe recorded: objects' days


def _describe_choice(choice: dict[str, Any]) -> str:
    """One line: which recipe --recipe auto chose and why."""
    measured = f" (content spread {choice['content_spread']:.4f}, texture above {choice['threshold']})" \
        if "content_spread" in choice else ""
    return f"recipe auto: {choice['chosen']}: {choice['reason']}{measured}; name another with --recipe"


def _cmd_recipes(a: argparse.Namespace) -> int:
    import textwrap

    from training.recipes import AUTO, DEFAULT_RECIPE, load_recipe, recipe_names
    from training.recipes.auto import SPREAD_THRESHOLD

    print(f"{AUTO}{' (default)' if AUTO == DEFAULT_RECIPE else ''}")
    print(textwrap.indent(textwrap.fill(
        "chooses texture or objects from the good images: texture when good images differ as wholes (the share of "
        f"teacher-feature variance between whole images, the content spread, is above {SPREAD_THRESHOLD}), objects "
        "when they contain the same things; the choice and the figure go into config.yaml and report.json", 100), "  "))
    for name in recipe_names():
        r = load_recipe(name)
        print(f"{name}{' (default)' if name == DEFAULT_RECIPE else ''}")
        print(textwrap.indent(textwrap.fill(r.summary, 100), "  "))
        for m in r.measured:
            figs = ", ".join(f"{k} {v}" for k, v in m.figures.items())
            print(f"  measured: {m.dataset}: {figs} ({m.budget}, {m.date})")
            print(textwrap.indent(textwrap.fill(m.command, 100), "      "))
        if not r.measured:
            print("  measured: see docs/benchmarks.md (the defaults)")
    print("use: edge-train fit --recipe NAME --data DATA --out RUN")
    return 0


def _describe_fusion(fusion: dict[str, Any]) -> str:
    """Which map weights the selection set chose, among what, or why nothing was chosen; then a line per branch
    the choice left out of the model."""
    if "chosen" not in fusion:
        return f"fusion: the recipe's ({fusion.get('skipped', 'not recorded')})"
    tried = "; ".join(f"{c['map_weights']} {c['selection_auroc']:.3f}" for c in fusion["candidates"])
    line = f"fusion: map weights {fusion['chosen']['map_weights']} chosen on the selection set (AUROC of each: {tried})"
    return "\n".join([line, *(f"  dropped: {d}" for d in fusion.get("dropped", []))])


def _eval_dir(run: Path, data: Path) -> Path:
    """Where `edge-train eval` writes by default: beside the fit's report, one folder per dataset."""
    name = data.resolve().name or "data"
    return run / "evals" / name


def _cmd_eval(a: argparse.Namespace) -> int:
    from training.data import open_dataset
    from training.pipeline import write_report
    from training.run import load_run

    run = Path(a.run)
    state = load_run(run)
    data = open_dataset(a.data, state.config.val_fraction, state.config.seed)
    out = Path(a.out) if a.out else _eval_dir(run, Path(a.data))
    if out.resolve() == run.resolve():
        print(f"edge-train: error: --out {out} is the run folder; its report.json and plots/ are the fit's: "
              "pass another folder", file=sys.stderr)
        return 2
    report = write_report(state, data, out, run)
    _print_report(report, out)
    print(_next_deploy(run))
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from training.export import export_onnx
    from training.run import load_run

    state = load_run(Path(a.run))
    print(f"wrote {export_onnx(state, Path(a.run))}")
    print(_next_deploy(Path(a.run)))
    return 0


def _cmd_distill(a: argparse.Namespace) -> int:
    from training.distill import DistillConfig, distill_teacher
    from training.models.efficientad import VARIANTS

    width = a.width
    if a.old_size is not None:
        # `--size` meant pixels in fit and the PDN width here; it stays as a hidden alias for a while
        print("edge-train: warning: distill-teacher --size is now --width (the PDN width); the input size in "
              "pixels is --size-px", file=sys.stderr)
        if width is not None and width != a.old_size:
            print(f"edge-train: error: --width {width} and --size {a.old_size} disagree: pass --width only",
                  file=sys.stderr)
            return 2
        width = a.old_size
    width = width or "s"
    cfg = DistillConfig(width=width, backbone=a.backbone, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                        seed=a.seed, size_px=a.size_px, pool=a.pool, workers=a.workers, max_minutes=a.max_minutes)
    out = distill_teacher(cfg, Path(a.out), [Path(d) for d in a.data], resume=a.resume)
    model = next(name for name, v in VARIANTS.items() if v.get("size") == width)
    print(f"next: edge-train fit --data DATA --model {model} --teacher pdn --teacher-weights {out} "
          f"--size {a.size_px} --out runs/NAME")
    return 0


def _cfg_help(field: str, text: str | None = None) -> str:
    """Help for a fit flag that overrides a config key: its meaning and the default it overrides."""
    from training.config import FitConfig

    f = FitConfig.model_fields[field]
    default = "none" if f.default is None else f.default
    return f"{text or f.description} (default: {default}, or --config's {field})"


def build_parser() -> argparse.ArgumentParser:
    from training.clihelp import DefaultsHelpFormatter
    from training.models import MODELS
    from training.recipes import AUTO, DEFAULT_RECIPE, recipe_names

    fmt = {"formatter_class": DefaultsHelpFormatter}
    p = argparse.ArgumentParser(prog="edge-train", description="Train teacher-student anomaly models on good images.",
                                **fmt)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="write a synthetic dataset (MVTec LOCO layout)", **fmt)
    s.add_argument("out", help="dataset folder to write")
    s.add_argument("--size", type=int, default=256, help="image size in pixels")
    s.add_argument("--n-train", type=int, default=60, help="good training images")
    s.add_argument("--n-val", type=int, default=20, help="good validation images (they set the threshold)")
    s.add_argument("--n-test", type=int, default=30, help="good, structural and logical test images each")
    s.add_argument("--seed", type=int, default=0, help="seed of the generator")
    s.set_defaults(fn=_cmd_synth)

    f = sub.add_parser("fit", help="train a model on good images, calibrate, evaluate and export to ONNX", **fmt)
    f.add_argument("--data", required=True, help="dataset folder (plain folder, MVTec AD or MVTec LOCO layout)")
    f.add_argument("--model", choices=sorted(MODELS), default=None, help=_cfg_help("model", "model family and variant"))
    f.add_argument("--teacher", choices=["lite0", "lite1", "lite2", "pdn", "auto"], default=None,
                   help="EfficientAD teacher: a frozen EfficientNet-Lite, the distilled PDN, or auto (the PDN where "
                        "the package ships one for the width, else lite0) (default: the recipe's)")
    f.add_argument("--teacher-weights", metavar="PATH",
                   help="PDN teacher weights from `edge-train distill-teacher` (default: the package's teacher of the "
                        "model's width, training/weights/pdn_<width>_lite0.pt; s is shipped)")
    f.add_argument("--margin", choices=["truncate", "hinge"], default=None, help="enable the DFSC margin constraint")
    f.add_argument("--map-weights", type=float, nargs=3, metavar=("ST", "AE", "GAUSS"), default=None,
                   help="EfficientAD map weights; texture products without logical constraints: 1 0 2")
    f.add_argument("--recipe", choices=[AUTO, *recipe_names()], default=None,
                   help="named settings to start from (edge-train recipes lists them with their measured figures); "
                        f"auto chooses texture or objects from the good images (default: {DEFAULT_RECIPE})")
    f.add_argument("--config", help="YAML config; overrides the recipe, flags override it")
    f.add_argument("--out", required=True, help="run folder")
    f.add_argument("--steps", type=int, help=_cfg_help("steps"))
    f.add_argument("--size", type=int, help=_cfg_help("size_px", "input size in pixels"))
    f.add_argument("--batch-size", type=int, help=_cfg_help("batch_size"))
    f.add_argument("--seed", type=int, help=_cfg_help("seed"))
    f.add_argument("--far", type=float, help=_cfg_help("false_alarm_rate", "target false-alarm rate for the threshold"))
    f.add_argument("--max-minutes", type=float,
                   help="budget of the whole fit (images, teacher features, training, calibration): the batch is "
                        "chosen by measured step times, the lr drop and AST's phases are scheduled within it, "
                        "report.json's `budget` says what was traded (default: none, --steps decides)")
    again = f.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
    again.add_argument("--overwrite", action="store_true",
                       help="start clean in a used --out folder: removes its model, reports and quantized/ "
                            "artifacts (without --resume or --overwrite, fit refuses a non-empty folder)")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.set_defaults(fn=_cmd_fit)

    r = sub.add_parser("recipes", help="list the named recipes with the figures each reached", **fmt)
    r.set_defaults(fn=_cmd_recipes)

    e = sub.add_parser("eval", help="evaluate a trained run on a dataset; writes its own report beside the fit's",
                       **fmt)
    e.add_argument("run", help="trained run folder")
    e.add_argument("--data", required=True, help="dataset folder (labelled test images give metrics and plots)")
    e.add_argument("--out", help="report folder (default: RUN/evals/<name of the --data folder>)")
    e.set_defaults(fn=_cmd_eval)

    x = sub.add_parser("export", help="re-export a trained run to ONNX", **fmt)
    x.add_argument("run", help="trained run folder")
    x.set_defaults(fn=_cmd_export)

    d = sub.add_parser("distill-teacher", help="distil a PDN teacher from EfficientNet-Lite features", **fmt)
    d.add_argument("--out", required=True, help="weights file to write (and OUT.ckpt beside it for --resume)")
    d.add_argument("--width", choices=["s", "m", "tiny"], default=None,
                   help="PDN width: s and m as in EfficientAD (use with efficientad-s / -m), tiny for tests "
                        "(default: s)")
    d.add_argument("--size", dest="old_size", choices=["s", "m", "tiny"], default=None, help=argparse.SUPPRESS)
    d.add_argument("--backbone", choices=["lite0", "lite1", "lite2"], default="lite0",
                   help="EfficientNet-Lite whose features the PDN learns")
    d.add_argument("--data", nargs="*", default=[], help="folders of extra images (product images, photos)")
    d.add_argument("--steps", type=int, default=60000, help="optimiser steps")
    d.add_argument("--batch-size", type=int, default=16, help="images per step")
    d.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    d.add_argument("--size-px", type=int, default=256, help="input size in pixels")
    d.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    d.add_argument("--pool", type=int, default=2048, help="procedural/photo images generated up front (uint8 on the device)")
    d.add_argument("--workers", type=int, default=0, help="processes that generate the pool (0: one per core)")
    d.add_argument("--max-minutes", type=float, help="stop after this many minutes (default: none, --steps decides)")
    d.add_argument("--resume", action="store_true", help="continue from OUT.ckpt")
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
