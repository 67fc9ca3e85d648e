"""CLI flags: defaults shown in --help, one meaning per flag name, and next-command hints that work (issue 20)."""

import subprocess
import sys

import pytest


def _help(module, *args):
    r = subprocess.run([sys.executable, "-m", module, *args, "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return " ".join(r.stdout.split())  # argparse wraps lines


@pytest.mark.parametrize("module,args,expected", [
    ("training.cli", ["fit"], ["--steps STEPS optimiser steps (default: 2000", "input size in pixels (default: 256",
                               "(default: 0.005, or --config's false_alarm_rate)"]),
    ("training.cli", ["distill-teacher"], ["(default: 60000)", "input size in pixels (default: 256)", "(default: s)"]),
    ("training.cli", ["synth"], ["image size in pixels (default: 256)"]),
    ("quantize.cli", [], ["(default: 0.005)", "(default: 0.02)", "(default: 64)"]),
    ("deploy.cli", [], ["(default: 0.005)", "(default: 0.02)"]),
    ("deploy.cli", ["verify"], ["(default: auto)", "(default: .lineside-cache)"]),
])
def test_help_shows_defaults(module, args, expected):
    """ux: `fit --help` showed no defaults."""
    text = _help(module, *args)
    for e in expected:
        assert e in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_distill_teacher_names_the_width_apart_from_the_pixel_size():
    """ux: `--size` meant pixels in fit and the PDN width in distill-teacher."""
    text = _help("training.cli", "distill-teacher")
    assert "--width {s,m,tiny}" in text and "--size-px" in text
    assert "--size " not in text and "--size {" not in text  # the old name is a hidden alias only


def test_distill_hint_trains_with_the_new_teacher(tmp_path, tiny_data):
    """ux: the README's distill-teacher example failed without --out, and nothing said how to use the teacher.
    The old `--size` still works, with a warning; the printed next command runs as printed."""
    out = tmp_path / "pdn_tiny.pt"
    r = subprocess.run([sys.executable, "-m", "training.cli", "distill-teacher", "--out", str(out), "--size", "tiny",
                        "--size-px", "64", "--batch-size", "2", "--pool", "8", "--workers", "1", "--steps", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "--size is now --width" in r.stderr
    hint = r.stdout.strip().splitlines()[-1]
    assert hint.startswith("next: edge-train fit --data DATA --model efficientad-tiny --teacher pdn --teacher-weights")
    cmd = hint.removeprefix("next: edge-train ").replace("DATA", str(tiny_data)).replace("runs/NAME", str(tmp_path / "r"))
    r = subprocess.run([sys.executable, "-m", "training.cli", *cmd.split(), "--steps", "1", "--batch-size", "2", "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import json

    assert json.loads((tmp_path / "r" / "model.json").read_text())["params"]["teacher_weights"] == str(out)


def test_distill_refuses_width_and_old_size_that_disagree(tmp_path):
    r = subprocess.run([sys.executable, "-m", "training.cli", "distill-teacher", "--out", str(tmp_path / "t.pt"),
                        "--width", "s", "--size", "m"], capture_output=True, text=True)
    assert r.returncode == 2 and "disagree" in r.stderr
