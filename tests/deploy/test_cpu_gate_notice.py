"""`edge-deploy --target cpu` says when a runtime's INT8 artifact failed its gate (issue 20 item 8)."""

import shutil

import numpy as np


def test_cpu_target_says_which_runtime_failed_its_gate(tiny_run, tmp_path, monkeypatch, capsys):
    """ux: `edge-deploy --target cpu` printed 1,191 lines and never said that OpenVINO failed its gate."""
    import deploy.cli as dcli
    from edge.contract import QuantGate
    from quantize.gate import gate_report

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("quantized"))
    real = dcli._quantized
    labels = np.r_[np.zeros(4, int), np.ones(4, int)]
    fs, maps = labels + np.linspace(0, 0.1, 8), np.zeros((8, 4, 4))
    failing_gate = QuantGate(**gate_report(labels, None, (maps, fs), (maps, fs[::-1]), 0.5, 0.5))

    def quantized(run_, qruntime, *args, **kwargs):
        if qruntime == "openvino":  # OpenVINO's quant.json as its gate refused it
            return real(run_, qruntime, *args, **kwargs).model_copy(update={"gate": failing_gate})
        return real(run_, qruntime, *args, **kwargs)

    monkeypatch.setattr(dcli, "_quantized", quantized)
    rc = dcli.main(["--target", "cpu", str(run), "--out", str(tmp_path / "b"), "--max-drop", "1.0",
                    "--max-far-increase", "1.0"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "openvino INT8 FAILED its accuracy gate and is not used: gate failed: image-AUROC drop" in out
    warning = [line for line in err.splitlines() if line.startswith("edge-deploy: warning:")]
    assert warning == [f"edge-deploy: warning: openvino INT8 failed its accuracy gate, so this bundle runs onnxruntime "
                       f"({run / 'quantized' / 'openvino' / 'quant.json'}, gate.png beside it)"]
