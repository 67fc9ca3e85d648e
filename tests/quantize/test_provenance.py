"""INT8 artifacts are tied to what they were made from, and the INT8 threshold uses the model's score rule."""

import json
import shutil

import numpy as np
import onnx
import pytest
from PIL import Image


@pytest.fixture()
def fast_quantize(monkeypatch):
    """One candidate and no sensitivity pass: what these tests check does not depend on the search."""
    import quantize.cli as qcli
    from quantize.runtimes import quantizer

    monkeypatch.setattr(qcli, "_sensitivity", lambda *a: {})
    monkeypatch.setattr(quantizer("onnxruntime"), "candidates",
                        lambda *a: [{"method": "minmax", "scope": "conv", "keep_float": []}])


@pytest.fixture()
def run_copy(tiny_run, tmp_path):
    """A private copy of the session's tiny run (without its quantized/ folder), safe to change."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("quantized"))
    return out


@pytest.fixture(scope="module")
def top_run(tiny_data, tmp_path_factory):
    """A tiny EfficientAD that scores by the mean of the hottest 5 % of the map (params: {score_pool: top})."""
    from training.config import FitConfig
    from training.data import open_dataset
    from training.pipeline import train_run

    out = tmp_path_factory.mktemp("toprun")
    cfg = FitConfig(model="efficientad-tiny", size_px=64, steps=5, batch_size=4,
                    params={"score_pool": "top", "score_top": 0.05})
    train_run(cfg, open_dataset(tiny_data), out, progress=False, evaluate=False)
    return out


def test_int8_threshold_uses_the_models_score_rule(top_run, fast_quantize):
    """Issue 18: the threshold was recalibrated from the map's max; the model scores by the top-5 % mean."""
    from edge.backends import create_backend
    from quantize.calib import build_sets
    from quantize.cli import quantize_run
    from training.metrics import threshold_at_far

    from edge.contract import read_model_card

    card = read_model_card(top_run)
    assert card.normalisation.score_pool == "top" and card.normalisation.score_k > 1
    res = quantize_run(top_run, "onnxruntime", max_drop=1.0, max_far_increase=1.0)
    # what the device computes: the artifact's own score output, re-anchored by the bundle's affine
    _, held_out, _ = build_sets(card, None)
    backend = create_backend("onnxruntime", top_run / "quantized" / "onnxruntime" / res.artifact, "cpu")
    scores = np.array([res.output_affine.apply(backend.infer(x)).score for x in held_out])
    assert res.threshold == pytest.approx(threshold_at_far(scores, card.false_alarm_rate_target), rel=1e-5)


def test_deploy_requantizes_when_model_onnx_changed(run_copy, fast_quantize, capsys):
    """ux-r2 E1: a retrain into the same run folder, then deploy, shipped the INT8 graph of the old model."""
    from deploy.cli import _quantized
    from edge.contract import sha256_file

    first = _quantized(run_copy, "onnxruntime", 1.0, "CPU", max_far_increase=1.0)
    old_art = (run_copy / "quantized" / "onnxruntime" / first.artifact).read_bytes()
    capsys.readouterr()
    again = _quantized(run_copy, "onnxruntime", 1.0, "CPU", max_far_increase=1.0)
    assert "using existing" in capsys.readouterr().out and again.source == first.source

    # a retrain: same contract, different weights (here: one initializer nudged)
    proto = onnx.load(str(run_copy / "model.onnx"))
    init = next(t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4)
    w = onnx.numpy_helper.to_array(init) * np.float32(1.01)
    init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    onnx.save(proto, str(run_copy / "model.onnx"))

    res = _quantized(run_copy, "onnxruntime", 1.0, "CPU", max_far_increase=1.0)
    out = capsys.readouterr().out
    assert "quantized/onnxruntime is stale: model.onnx changed since it was quantized; re-quantizing" in out
    assert res.source.model_sha256 == sha256_file(run_copy / "model.onnx")
    assert (run_copy / "quantized" / "onnxruntime" / res.artifact).read_bytes() != old_art


def test_deploy_requantizes_when_gate_settings_changed(run_copy, fast_quantize, capsys):
    from deploy.cli import _quantized

    _quantized(run_copy, "onnxruntime", 1.0, "CPU", max_far_increase=1.0)
    capsys.readouterr()
    res = _quantized(run_copy, "onnxruntime", 1.0, "CPU", max_far_increase=0.5)
    assert "stale: settings changed (max_far_increase 1.0 -> 0.5)" in capsys.readouterr().out
    assert res.source.settings["max_far_increase"] == 0.5


def test_quant_json_without_a_source_is_stale(run_copy, fast_quantize, capsys):
    """An artifact made before sources were recorded cannot be shown to match: it is rebuilt, not trusted."""
    from deploy.cli import _quantized

    first = _quantized(run_copy, "onnxruntime", 1.0, "CPU", max_far_increase=1.0)
    qjson = run_copy / "quantized" / "onnxruntime" / "quant.json"
    qjson.write_text(json.dumps(first.model_dump(exclude={"source", "schema_version", "threshold_basis"})))
    capsys.readouterr()
    _quantized(run_copy, "onnxruntime", 1.0, "CPU", max_far_increase=1.0)
    assert "stale: quant.json records no source" in capsys.readouterr().out


def test_images_fingerprint_follows_the_image_contents(tmp_path):
    from quantize.calib import images_fingerprint

    data = tmp_path / "d"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(data / f"{i}.png")
    from edge.contract import ModelCard

    meta = ModelCard.model_construct(dataset=str(data), size_px=16)  # only what the fingerprint reads
    a = images_fingerprint(meta, None, 64)
    assert a == images_fingerprint(meta, None, 64)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(data / "3.png")  # same name, new contents
    b = images_fingerprint(meta, None, 64)
    assert b != a
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(data / "6.png")  # one more good image
    assert images_fingerprint(meta, None, 64) != b
