"""edge-quantize's output: no third-party INFO floods, a gate plot that says pass or fail, the next command."""

from pathlib import Path

import numpy as np


def _reader(n=4, size=64):
    from quantize.calib import CalibrationReader

    rng = np.random.default_rng(0)
    return CalibrationReader([rng.uniform(0, 1, (1, 3, size, size)).astype(np.float32) for _ in range(n)])


def test_nncf_quantization_logs_no_info_lines(tiny_run, tmp_path, capfd):
    """ux: OpenVINO quantization printed ~850 INFO:nncf lines (one per ignored node and skipped quantizer)."""
    from quantize.graph import final_convs
    from quantize.runtimes.openvino import quantize_nncf

    fp32 = tiny_run / "model.onnx"
    # an ignored scope is what makes NNCF list every node it keeps in float
    out = quantize_nncf(fp32, tmp_path / "m.xml", _reader(), ignore=final_convs(fp32), float_types=["Add"])
    text = "".join(capfd.readouterr())
    assert out.is_file()
    assert "INFO:nncf" not in text and "ignored nodes" not in text


def test_ort_percentile_calibration_prints_nothing(tiny_run, tmp_path, capfd):
    """ux: ORT's histogram calibrators print five lines of bin counts per candidate."""
    from quantize.runtimes.onnxruntime import quantize_qdq

    out = quantize_qdq(tiny_run / "model.onnx", tmp_path / "m.onnx", _reader(), "percentile", "conv")
    stdout, _ = capfd.readouterr()
    assert out.is_file()
    assert "histogram" not in stdout.lower() and "Percentile" not in stdout


def test_gate_plot_heading_says_passed_or_failed(tmp_path):
    """ux: gate.png showed the scatter and both thresholds but not whether the gate passed."""
    from PIL import Image

    from quantize.gate import gate_report, plot_scores

    labels = np.r_[np.zeros(6, int), np.ones(6, int)]
    fs = labels + np.linspace(0, 0.5, 12)
    maps = np.zeros((12, 4, 4))
    good = gate_report(labels, None, (maps, fs), (maps, fs), 0.7, 0.7)
    bad = gate_report(labels, None, (maps, fs), (maps, fs[::-1]), 0.7, 0.7)
    plot_scores(fs, fs, labels, 0.7, 0.7, tmp_path / "pass.png", "t", good)
    plot_scores(fs, fs[::-1], labels, 0.7, 0.7, tmp_path / "fail.png", "t", bad)
    assert Image.open(tmp_path / "pass.png").text["Description"].startswith("gate PASSED")
    failed = Image.open(tmp_path / "fail.png").text["Description"]
    assert failed.startswith("gate FAILED") and "image_auroc_drop" in failed


def test_next_hint_names_the_deploy_targets_of_the_runtime():
    from quantize.cli import next_hint

    run = Path("runs/a")
    assert next_hint(run, "onnxruntime") == "next: edge-deploy --target arm|cpu runs/a --out bundles/a"
    assert next_hint(run, "openvino") == "next: edge-deploy --target intel-npu|cpu runs/a --out bundles/a"
    assert next_hint(run, "tensorrt") == "next: edge-deploy --target jetson runs/a --out bundles/a"
    assert "no edge-deploy target" in next_hint(run, "litert")


def test_quantize_ends_with_the_next_command_only_when_the_gate_passes(monkeypatch, capsys):
    """ux: edge-quantize never said what to run next."""
    import quantize.cli as qcli
    from edge.contract import QuantResult

    def fake(run, runtime, *args, **kwargs):
        return QuantResult.model_validate({
            "runtime": runtime, "artifact": "model_int8.onnx", "device": "CPU", "mixed_precision": {"chosen": {}},
            "threshold": 0.5, "threshold_fp32": 0.5, "output_affine": {}, "minutes": 0.1,
            "calibration": {"n_images": 4, "source": "training good images"},
            "threshold_basis": {"n_good_images": 2, "false_alarm_rate_target": 0.005, "warning": None},
            "gate": {"passed": passed, "failed": [] if passed else ["image_auroc_drop"], "n_images": 4,
                     "n_defective": 2, "n_good": 2, "image_auroc_drop": 0.1, "spearman_scores": 0.9,
                     "max_drop": 0.005}})

    monkeypatch.setattr(qcli, "quantize_run", fake)
    passed = True
    assert qcli.main(["runs/a", "--runtime", "onnxruntime"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "next: edge-deploy --target arm|cpu runs/a --out bundles/a"
    passed = False
    assert qcli.main(["runs/a", "--runtime", "onnxruntime"]) == 1
    assert "next:" not in capsys.readouterr().out
