"""Reports tell the truth: worst.png shows the misses and false alarms, the histogram and report.json carry the
thresholds the bundles use, and `edge-train eval` writes its own report beside the fit's (issue 20 item 7)."""

import hashlib
import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
from PIL import Image


def _arrays(scores, labels):
    n = len(scores)
    rng = np.random.default_rng(0)
    return {"scores": np.asarray(scores, float), "labels": np.asarray(labels),
            "kinds": np.array(["structural" if y else "good" for y in labels]),
            "maps": rng.uniform(0, 1, (n, 16, 16)), "images": rng.uniform(0, 1, (n, 3, 16, 16))}


def test_misses_and_false_alarms_are_counted_as_the_device_decides():
    from training.report import misses_and_false_alarms

    scores = np.array([0.1, 0.9, 0.5, 0.3, 0.95, 0.2, 0.5])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    miss, fa = misses_and_false_alarms(scores, labels, 0.5)
    assert miss.tolist() == [5, 3, 6]  # score <= threshold is OK on the device; lowest (most wrong) first
    assert fa.tolist() == [1]  # 0.5 is not above the threshold: not a false alarm


def test_worst_png_shows_misses_and_false_alarms_not_the_easy_catches(tmp_path):
    """ux: worst.png showed the six highest-scored images, i.e. the easiest catches."""
    from training.report import write_plots

    # defects 4..9 are caught with high scores; 3 is missed; good image 1 is a false alarm
    scores = [0.1, 0.8, 0.2, 0.3, 5.0, 4.0, 3.0, 2.5, 2.0, 1.5]
    labels = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    write_plots(_arrays(scores, labels), 0.5, tmp_path, "t")
    desc = Image.open(tmp_path / "worst.png").text["Description"]
    assert "1 miss and 1 false alarm" in desc
    assert desc.endswith("MISS 3; FALSE ALARM 1")
    # when nothing is wrong at the threshold it shows the closest calls, and says so
    separable = [0.1, 0.4, 0.2, 0.45, 5.0, 4.0, 3.0, 2.5, 2.0, 1.5]
    write_plots(_arrays(separable, labels), 0.42, tmp_path / "b", "t")
    desc = Image.open(tmp_path / "b" / "worst.png").text["Description"]
    assert desc.startswith("no misses or false alarms") and "closest catch 3" in desc and "closest good 1" in desc
    assert "closest catch 4" not in desc  # the highest score is not a close call


def test_histogram_draws_the_thresholds_the_bundles_use(tmp_path):
    from training.report import write_plots

    write_plots(_arrays([0.1, 0.2, 0.9], [0, 0, 1]), 0.5, tmp_path, "t", other_thresholds={"ort INT8": 0.42})
    assert Image.open(tmp_path / "histogram.png").text["Description"] == "thresholds: model 0.5, ort INT8 0.42"
    # a model that learnt nothing scores every image alike, at its threshold: the report still draws it
    write_plots(_arrays([0.3, 0.3, 0.3], [0, 0, 1]), 0.3, tmp_path / "flat", "t")
    assert (tmp_path / "flat" / "histogram.png").stat().st_size > 1000


def test_bundle_thresholds_take_only_current_passing_int8_artifacts(tmp_path):
    """ux: report.json and the histogram showed the FP32 threshold while the INT8 bundle used another."""
    from training.pipeline import bundle_thresholds

    (tmp_path / "model.onnx").write_bytes(b"model")
    sha = hashlib.sha256(b"model").hexdigest()
    from edge.contract import QuantResult

    def quant(runtime, model_sha, passed, thr):
        return QuantResult(
            runtime=runtime, artifact="model.int8", device="CPU", threshold=thr, threshold_fp32=0.25,
            output_affine={}, calibration={"n_images": 4, "source": "training good images"},
            mixed_precision={"chosen": {}}, minutes=0.1,
            gate={"passed": passed, "image_auroc_drop": 0.0, "spearman_scores": 1.0},
            source={"model_sha256": model_sha, "images_sha256": "i", "settings": {}})

    for rt, model_sha, passed, thr in [("onnxruntime", sha, True, 0.3), ("openvino", sha, False, 0.4),
                                       ("tensorrt", "old", True, 0.5)]:
        (tmp_path / "quantized" / rt).mkdir(parents=True)
        quant(rt, model_sha, passed, thr).write(tmp_path / "quantized" / rt / "quant.json")
    # a damaged file is no bundle's threshold: skipped, not a crash of the report
    (tmp_path / "quantized" / "litert").mkdir()
    (tmp_path / "quantized" / "litert" / "quant.json").write_text('{"threshold": 0.6')
    assert bundle_thresholds(tmp_path, SimpleNamespace(threshold=0.25)) == {"fp32": 0.25, "int8 onnxruntime": 0.3}


def _eval(*args):
    return subprocess.run([sys.executable, "-m", "training.cli", "eval", *args], capture_output=True, text=True)


def test_eval_writes_its_own_report_beside_the_fits(tiny_run, tiny_data, tmp_path):
    """ux: `edge-train eval` on an unlabelled folder overwrote the fit's report.json and left its stale plots."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("quantized"))
    (run / "report.json").write_text('{"fit": true}')
    (run / "plots").mkdir(exist_ok=True)
    (run / "plots" / "roc.png").write_bytes(b"fit's plot")

    r = _eval(str(run), "--data", str(tiny_data))
    assert r.returncode == 0, r.stderr
    rep = json.loads((run / "evals" / tiny_data.name / "report.json").read_text())
    assert rep["n_test"] == 18 and rep["bundle_thresholds"]["fp32"] == rep["threshold"]
    assert set(rep["misses"]) | set(rep["false_alarms"]) <= {str(t) for t in tiny_data.rglob("*.png")}
    assert {"roc.png", "histogram.png", "worst.png"} <= {p.name for p in (run / "evals" / tiny_data.name / "plots").iterdir()}
    assert r.stdout.strip().splitlines()[-1].startswith(f"next: edge-deploy --target cpu {run}")

    plain = tmp_path / "plain"  # good images only: no test set
    plain.mkdir()
    for p in sorted((tiny_data / "train" / "good").glob("*.png"))[:4]:
        shutil.copy(p, plain / p.name)
    stale = run / "evals" / "plain" / "plots"
    stale.mkdir(parents=True)
    (stale / "worst.png").write_bytes(b"from an earlier eval")
    r = _eval(str(run), "--data", str(plain))
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "evals" / "plain" / "report.json").read_text())["n_test"] == 0
    assert not stale.exists()  # no plot outlives the report it belonged to
    assert (run / "report.json").read_text() == '{"fit": true}' and (run / "plots" / "roc.png").read_bytes() == b"fit's plot"

    r = _eval(str(run), "--data", str(plain), "--out", str(run))
    assert r.returncode == 2 and "the fit's" in r.stderr and len(r.stderr.strip().splitlines()) == 1
