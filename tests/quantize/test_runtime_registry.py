"""A runtime is one column (issue 18 item 2): a quantizer, an edge backend and a target row under one name are
all it takes; neither quantize/cli.py nor deploy/cli.py knows the runtime."""

import json
import shutil
from pathlib import Path

import pytest

from quantize.runtimes import QUANTIZERS, Quantizer, register


class CopyQuantizer(Quantizer):
    """'Quantizes' by copying the FP32 graph, which ONNX Runtime runs; two candidates to search between."""

    name = "copy"
    backend = "onnxruntime"
    artifact = "model_copy.onnx"

    def candidates(self, finals, head, sensitive):
        return [{"copies": 1}, {"copies": 2}]

    def build(self, fp32, out, calib, cand, device, work):
        return Path(shutil.copy2(fp32, out))


@pytest.fixture()
def copy_runtime(monkeypatch):
    """The copy runtime's column: its quantizer, an edge backend by its name (ONNX Runtime's module) and a
    target row; all gone afterwards."""
    from deploy.targets import TARGETS, Target
    from edge.backends import BACKENDS

    register(CopyQuantizer())
    monkeypatch.setitem(BACKENDS, "copy", BACKENDS["onnxruntime"])
    monkeypatch.setitem(TARGETS, "copy-board", Target("copy-board", ("copy",), ("int8", "fp32"), "cpu", "",
                                                      "a board that runs copied graphs"))
    yield "copy"
    del QUANTIZERS["copy"]


def test_a_registered_runtime_is_a_choice_of_both_clis(copy_runtime, capsys):
    import deploy.cli as dcli
    import quantize.cli as qcli
    from quantize.errors import QuantizeError
    from quantize.runtimes import quantizer

    assert qcli.build_parser().parse_args(["run", "--runtime", "copy"]).runtime == "copy"
    assert "copy" in qcli.build_parser().format_help()
    with pytest.raises(SystemExit):
        dcli.main(["--help"])
    assert "copy-board" in capsys.readouterr().out
    with pytest.raises(QuantizeError, match="valid runtimes: copy, litert, onnxruntime"):
        quantizer("nope")


def test_a_registered_runtime_quantizes_and_deploys(copy_runtime, tiny_run, tmp_path, capsys):
    import deploy.cli as dcli
    from edge.bundle import load_bundle
    from quantize.cli import next_hint, quantize_run

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("quantized"))
    quantize_run(run, "copy", max_drop=1.0, max_far_increase=1.0)
    qdir = run / "quantized" / "copy"
    q = json.loads((qdir / "quant.json").read_text())
    assert q["runtime"] == "copy" and q["artifact"] == "model_copy.onnx"
    assert (qdir / "model_copy.onnx").read_bytes() == (run / "model.onnx").read_bytes()
    assert q["source"]["settings"]["runtime"] == "copy"
    mp = q["mixed_precision"]
    assert [{"copies": r["copies"]} for r in mp["candidates"]] == [{"copies": 1}, {"copies": 2}]  # both measured
    assert mp["chosen"] in ({"copies": 1}, {"copies": 2})
    # the same graph in the same runtime: nothing to re-anchor and nothing lost
    assert q["output_affine"]["scale"] == pytest.approx(1.0) and q["output_affine"]["offset"] == pytest.approx(0.0)
    assert q["gate"]["passed"] and q["gate"]["image_auroc_drop"] == pytest.approx(0.0)
    assert next_hint(run, "copy") == f"next: edge-deploy --target copy-board {run} --out bundles/run"

    out = tmp_path / "bundle"
    capsys.readouterr()
    assert dcli.main(["--target", "copy-board", str(run), "--out", str(out), "--max-drop", "1.0",
                      "--max-far-increase", "1.0"]) == 0
    printed = capsys.readouterr().out
    assert f"using existing copy INT8 artifact in {qdir}" in printed
    assert "self-test here: passed on onnxruntime" in printed
    m = load_bundle(out).manifest
    assert (m.target, m.runtime, m.artifact) == ("copy-board", "copy", "model_copy.onnx")
