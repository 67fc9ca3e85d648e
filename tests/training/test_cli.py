import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", "training.cli", *args], capture_output=True, text=True)


def test_unknown_config_key_is_a_one_line_error(tmp_path, tiny_data):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stepz: 3\n")
    r = _run("fit", "--data", str(tiny_data), "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert r.returncode == 1
    assert "stepz" in r.stderr and "valid keys" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_dataset_names_the_folder(tmp_path):
    r = _run("fit", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"))
    assert r.returncode == 1 and "nope" in r.stderr


def test_fit_resume_and_report(tmp_path, tiny_data):
    out = tmp_path / "run"
    common = ["fit", "--data", str(tiny_data), "--model", "efficientad-tiny", "--size", "64", "--out", str(out),
              "--batch-size", "2", "--quiet", "--map-weights", "1", "0", "2"]
    assert _run(*common, "--steps", "3").returncode == 0
    r = _run(*common, "--steps", "5", "--resume")
    assert r.returncode == 0, r.stderr
    import json

    assert json.loads((out / "train.json").read_text())["steps_done"] == 5
    assert json.loads((out / "model.json").read_text())["params"]["map_weights"] == [1.0, 0.0, 2.0]
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["image_auroc_by_kind"]) == {"logical", "structural"}
    assert all((out / "plots" / p).stat().st_size > 1000 for p in rep["plots"])


def test_distill_teacher_resumes_and_writes_a_loadable_fp16_teacher(tmp_path):
    import torch

    from training.models.teachers import load_pdn_teacher

    out = tmp_path / "t" / "pdn_tiny.pt"
    common = ["distill-teacher", "--out", str(out), "--size", "tiny", "--size-px", "64", "--batch-size", "2",
              "--pool", "8", "--workers", "1"]
    r = _run(*common, "--steps", "3")
    assert r.returncode == 0, r.stderr
    r = _run(*common, "--steps", "5", "--resume")
    assert r.returncode == 0, r.stderr
    assert torch.load(out.with_suffix(".ckpt"), weights_only=False)["step"] == 5
    saved = torch.load(out, weights_only=True)
    assert saved["steps_done"] == 5 and all(v.dtype == torch.float16 for v in saved["state_dict"].values())
    teacher = load_pdn_teacher("tiny", out)
    assert teacher(torch.rand(1, 3, 64, 64)).shape == (1, 232, 16, 16)  # Lite0 stages 3-5, grid = input/4


def test_distill_teacher_names_an_imageless_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    r = _run("distill-teacher", "--out", str(tmp_path / "t.pt"), "--size", "tiny", "--data", str(tmp_path / "empty"))
    assert r.returncode == 1 and "empty" in r.stderr and len(r.stderr.strip().splitlines()) == 1
