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
    r = _run(*common, "--steps", "3")
    assert r.returncode == 0, r.stderr
    assert "recipe auto: objects: good images contain the same things" in r.stdout
    # 6 held-out good images cannot resolve a 0.5 % false-alarm target: said in the output and both files
    assert "warning: threshold from only 6 good images" in r.stdout and "steps of 16.7%" in r.stdout
    # and ends with the command to run next (ux: fit never said)
    assert r.stdout.strip().splitlines()[-1].startswith(f"next: edge-deploy --target cpu {out} --out bundles/run")
    # a checkpoint an earlier release wrote (before the per-position scale existed) resumes too
    import torch

    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    del ckpt["model"]["pos_scale"]
    torch.save(ckpt, out / "checkpoint.pt")
    r = _run(*common, "--steps", "5", "--resume")
    assert r.returncode == 0, r.stderr
    assert "--resume: the run's recipe, objects" in r.stdout and "recipe auto:" not in r.stdout
    import json

    assert json.loads((out / "train.json").read_text())["steps_done"] == 5
    # resuming as another model is refused before anything is written: the run's config.yaml stays its record
    before = (out / "config.yaml").read_text()
    other = [*common[:-3], "1", "1", "1", "--steps", "6", "--resume"]
    r = _run(*other)
    assert r.returncode == 1 and "--overwrite" in r.stderr, r.stderr
    assert "trained with params.map_weights=[1.0, 0.0, 2.0] (this command: [1.0, 1.0, 1.0])" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and (out / "config.yaml").read_text() == before
    meta = json.loads((out / "model.json").read_text())
    assert meta["params"]["map_weights"] == [1.0, 0.0, 2.0]
    assert meta["threshold_basis"]["n_good_images"] == 6 and meta["threshold_basis"]["good_images_needed"] == 200
    from edge.contract import read_model_card

    assert read_model_card(out).threshold_basis.warning  # a typed field of the card, written by the export itself
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["image_auroc_by_kind"]) == {"logical", "structural"}
    assert rep["recipe"] == "objects" and rep["recipe_choice"]["chosen"] == "objects"
    assert all((out / "plots" / p).stat().st_size > 1000 for p in rep["plots"])
    assert rep["threshold_basis"]["warning"] and rep["threshold_basis"] == meta["threshold_basis"]
    # --overwrite starts clean: the old INT8 artifacts go with the old model
    (out / "quantized" / "onnxruntime").mkdir(parents=True)
    (out / "quantized" / "onnxruntime" / "quant.json").write_text("{}")
    r = _run(*common, "--steps", "2", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert "--overwrite: removed" in r.stdout and not (out / "quantized").exists()
    assert json.loads((out / "train.json").read_text())["steps_done"] == 2


def test_fit_refuses_a_used_run_folder_without_resume_or_overwrite(tmp_path, tiny_data):
    """ux-r2 E1: fit into an existing run overwrote it quietly, and deploy then shipped its old INT8 model."""
    out = tmp_path / "run"
    (out / "quantized" / "onnxruntime").mkdir(parents=True)
    (out / "model.pt").write_bytes(b"old")
    r = _run("fit", "--data", str(tiny_data), "--model", "efficientad-tiny", "--size", "64", "--steps", "1",
             "--out", str(out), "--quiet")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "not empty" in r.stderr and "--resume" in r.stderr and "--overwrite" in r.stderr and "--out" in r.stderr
    assert (out / "model.pt").read_bytes() == b"old" and not (out / "config.yaml").exists()  # nothing touched
    r = _run("fit", "--data", str(tiny_data), "--out", str(out), "--resume", "--overwrite")
    assert r.returncode == 2 and "not allowed with" in r.stderr


def test_overwrite_removes_only_what_a_run_writes(tmp_path):
    from training.cli import _clear_run

    for name in ("model.pt", "model.onnx", "model.json", "report.json", "notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "quantized" / "onnxruntime").mkdir(parents=True)
    (tmp_path / "plots").mkdir()
    removed = {"model.pt", "model.onnx", "model.json", "report.json", "quantized", "plots"}
    assert set(_clear_run(tmp_path)) == removed
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_threshold_basis_names_the_count_and_the_resolution():
    from training.report import threshold_basis

    few = threshold_basis(6, 0.005)
    assert few["false_alarm_resolution"] == round(1 / 6, 6) and few["good_images_needed"] == 200
    assert "6 good images" in few["warning"] and "16.7%" in few["warning"] and "0.50%" in few["warning"]
    assert threshold_basis(200, 0.005)["warning"] is None and threshold_basis(20, 0.05)["warning"] is None


def test_distill_teacher_resumes_and_writes_a_loadable_fp16_teacher(tmp_path):
    import torch

    from training.models.teachers import load_pdn_teacher

    out = tmp_path / "t" / "pdn_tiny.pt"
    common = ["distill-teacher", "--out", str(out), "--width", "tiny", "--size-px", "64", "--batch-size", "2",
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
    r = _run("distill-teacher", "--out", str(tmp_path / "t.pt"), "--width", "tiny", "--data", str(tmp_path / "empty"))
    assert r.returncode == 1 and "empty" in r.stderr and len(r.stderr.strip().splitlines()) == 1
