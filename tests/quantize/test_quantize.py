import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from quantize.cli import quantize_run
from quantize.cli import _MEASURED as MEASURED
from quantize.gate import gate_report


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_quantize_passes_gate_and_recalibrates(tiny_run, runtime):
    res = quantize_run(tiny_run, runtime, max_drop=1.0, max_far_increase=1.0)
    assert res.gate.passed
    assert (tiny_run / "quantized" / runtime / res.artifact).is_file()
    # scores are map units re-anchored on good images: the threshold may sit below zero, never be undefined
    assert np.isfinite(res.threshold) and res.output_affine.scale > 0
    mp = res.mixed_precision.model_dump()  # the runtime's search record, kept as it was written
    assert len(mp["candidates"]) + len(mp["skipped"]) >= 2  # the choice was measured, not assumed
    from quantize.runtimes.base import quantizer

    settings = lambda r: {k: v for k, v in r.items() if k not in MEASURED + ("skipped",)}  # noqa: E731
    for s in mp["skipped"]:  # only what is no faster than a measured, passing candidate goes unmeasured
        assert any(quantizer(runtime).no_faster(settings(s), settings(r)) for r in mp["candidates"]
                   if r["selection_auroc"] >= mp["selection_auroc_fp32"] - 1.0)
    assert (tiny_run / "quantized" / runtime / "gate.png").stat().st_size > 1000
    sqnr = mp["sensitivity"]["sqnr_db"]
    convs = {n.name for n in onnx.load(str(tiny_run / "model.onnx")).graph.node if n.op_type == "Conv"}
    assert convs <= set(sqnr) and all(np.isfinite(v) for v in sqnr.values())  # every layer measured
    assert all(r["latency_ms"] > 0 for r in mp["candidates"])
    chosen = next(r for r in mp["candidates"] if all(r.get(k) == v for k, v in mp["chosen"].items()))
    ok = [r for r in mp["candidates"] if r["selection_auroc"] >= mp["selection_auroc_fp32"] - 1.0]  # max_drop 1.0
    assert chosen["latency_ms"] == min(r["latency_ms"] for r in ok)  # the fastest that keeps accuracy
    if runtime == "onnxruntime":  # the branches pool through depthwise INT8 convolutions (ORT's INT8 pooling is slow)
        g = onnx.load(str(tiny_run / "quantized" / runtime / res.artifact)).graph
        pools = [n for n in onnx.load(str(tiny_run / "model.onnx")).graph.node
                 if n.op_type == "AveragePool" and n.name.count("/") > 2]
        by_name = {n.name: n for n in g.node}
        dq_outputs = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
        assert pools and all(by_name[p.name].op_type == "Conv" for p in pools)
        assert all(by_name[p.name].input[1] in dq_outputs for p in pools)  # and quantized


def test_selection_takes_the_fastest_candidate_that_keeps_accuracy():
    from quantize.cli import _choose

    rows = [{"selection_auroc": 1.0, "spearman": 0.999, "latency_ms": 30.0},
            {"selection_auroc": 1.0, "spearman": 0.50, "latency_ms": 10.0},  # fast but reorders the scores
            {"selection_auroc": 0.90, "spearman": 0.99, "latency_ms": 12.0},  # fast but loses AUROC
            {"selection_auroc": 0.998, "spearman": 0.99, "latency_ms": 20.0}]
    assert _choose(rows, fp32_auroc=1.0, max_drop=0.005, min_spearman=0.98) == 3  # --min-spearman 0.98
    lossy = [rows[2], {"selection_auroc": 0.95, "spearman": 0.9, "latency_ms": 15.0}]
    assert _choose(lossy, fp32_auroc=1.0, max_drop=0.005) == 1  # none acceptable: the most accurate
    assert _choose(rows, fp32_auroc=1.0, max_drop=0.005) == 1  # default: AUROC on the graded set decides


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "tensorrt"])
def test_each_searched_runtime_lists_distinct_candidates(runtime):
    from quantize.runtimes import quantizer

    finals, head = ["/m/final"], ["/m/head/Sub"]
    cands = quantizer(runtime).candidates(finals, head, [["/m/a"], ["/m/a"], []])  # a repeat and an empty set
    assert cands and all(c == json.loads(json.dumps(c)) for c in cands)  # recorded as they are in quant.json
    assert len({json.dumps(c, sort_keys=True) for c in cands}) == len(cands)
    assert all(set(c.get("keep_float", [])) <= {*finals, *head, "/m/a"} for c in cands)


def test_search_skips_what_is_no_faster_than_a_passing_candidate():
    from quantize.runtimes.base import keeps_more_float as _keeps_more_float
    from quantize.runtimes.base import quantizer

    base = {"method": "minmax", "scope": "all", "keep_float": ["a"]}
    assert _keeps_more_float({**base, "keep_float": ["a", "b"]}, base)
    assert _keeps_more_float({**base, "float_types": ["Add"]}, base)
    assert not _keeps_more_float({**base, "keep_float": ["b"]}, base)  # not a superset
    assert not _keeps_more_float({**base, "method": "percentile", "keep_float": ["a", "b"]}, base)  # other settings
    assert not _keeps_more_float({**base, "bias_correction": True}, base)
    ort = quantizer("onnxruntime")
    assert ort.no_faster({**base, "bias_correction": True}, base)  # same graph, other bias values
    assert ort.no_faster({**base, "scope": "conv", "keep_float": []}, base)  # conv scope: the rest in float
    assert not ort.no_faster(base, {**base, "scope": "conv", "keep_float": []})
    assert not ort.no_faster({**base, "method": "percentile", "scope": "conv"}, base)  # other calibration
    cands = ort.candidates(["f"], ["h"], [["s"]])
    assert [c["scope"] for c in cands].index("conv") > max(i for i, c in enumerate(cands) if c["scope"] == "all")


def test_selection_set_grades_the_defects_from_faint_to_plain():
    from quantize.cli import SELECTION_STRENGTHS, _select_set

    rng = np.random.default_rng(0)
    goods = [rng.uniform(0.3, 0.7, (1, 3, 32, 32)).astype(np.float32) for _ in range(4)]
    inputs, labels = _select_set(goods, 32, 0)
    assert len(inputs) == 4 * (1 + len(SELECTION_STRENGTHS)) and labels.sum() == 4 * len(SELECTION_STRENGTHS)
    # the same good image at rising strengths departs further from itself
    dev = [float(np.abs(inputs[4 + 4 * k] - goods[0]).max()) for k in range(len(SELECTION_STRENGTHS))]
    assert all(a < b for a, b in zip(dev, dev[1:])) and dev[0] > 0
    assert all(x.dtype == np.float32 and x.shape == (1, 3, 32, 32) for x in inputs)


def test_head_nodes_are_the_top_level_scoring_ops(tiny_run):
    from quantize.graph import head_nodes

    head = head_nodes(tiny_run / "model.onnx")
    ops = {n.name: n.op_type for n in onnx.load(str(tiny_run / "model.onnx")).graph.node}
    assert head and all(h.count("/") == 2 for h in head)
    assert "Sub" in {ops[h] for h in head}  # the student-teacher difference is in the head
    assert not any("/student/" in h or "/teacher/" in h for h in head)


def test_pools_as_convs_computes_the_same_scores(tiny_run):
    import onnxruntime as ort
    from onnx import shape_inference

    from quantize.graph import pools_as_convs

    model = shape_inference.infer_shapes(onnx.load(str(tiny_run / "model.onnx")))
    before = [n.name for n in model.graph.node if n.op_type == "AveragePool"]
    assert pools_as_convs(model) >= 2  # teacher and student pool
    tail = onnx.helper.make_node("AveragePool", ["x"], ["y"], name="/model/net/last/AveragePool", kernel_shape=[2, 2])
    g = onnx.helper.make_graph([tail], "g",
                               [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    assert pools_as_convs(onnx.helper.make_model(g)) == 0  # a pool no convolution follows stays with the finals
    after = [n.name for n in model.graph.node if n.op_type == "AveragePool"]
    assert set(after) < set(before) and all(a.count("/") == 2 for a in after)  # the head's pooling stays
    onnx.checker.check_model(model)
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    ref = ort.InferenceSession(str(tiny_run / "model.onnx")).run(None, {"image": x})
    new = ort.InferenceSession(model.SerializeToString()).run(None, {"image": x})
    for a, b in zip(ref, new):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_gate_fails_when_int8_scores_are_scrambled():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(20, int), np.ones(20, int)]
    fs = labels + rng.normal(0, 0.1, 40)
    maps = np.zeros((40, 4, 4))
    rep = gate_report(labels, None, (maps, fs), (maps, rng.permutation(fs)), 0.5, 0.5, 0.005)
    assert not rep["passed"] and rep["image_auroc_drop"] > 0.005


def test_cli_exits_1_when_gate_is_exceeded(tiny_run):
    # `ort`, the old spelling, still works and writes where the one spelling says
    r = subprocess.run([sys.executable, "-m", "quantize.cli", str(tiny_run), "--runtime", "ort", "--max-drop", "-1"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "gate failed" in r.stderr
    assert "--runtime ort is deprecated; use --runtime onnxruntime" in r.stderr
    assert json.loads((tiny_run / "quantized" / "onnxruntime" / "quant.json").read_text())["gate"]["passed"] is False


def test_tensorrt_graph_is_symmetric_qdq_and_runs_in_ort(tiny_run):
    import onnxruntime as ort

    res = quantize_run(tiny_run, "tensorrt", max_drop=1.0)
    path = tiny_run / "quantized" / "tensorrt" / res.artifact
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    zps = [inits[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)  # symmetric INT8, as TensorRT expects
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    q = ort.InferenceSession(str(path)).run(None, {"image": x})
    f = ort.InferenceSession(str(tiny_run / "quantized" / "tensorrt" / "model_fp32.onnx")).run(None, {"image": x})
    assert q[0].shape == f[0].shape and np.isfinite(q[1]).all()


def test_sensitive_layers_are_cut_by_the_sqnr_bound():
    from quantize.sensitivity import sensitive_nodes

    sqnr = {"/model/teacher/a": 4.0, "/model/student/b": 35.0, "/model/ae/c": 22.0}
    assert sensitive_nodes(sqnr, 20) == ["/model/teacher/a"]
    assert sensitive_nodes(sqnr, 30) == ["/model/ae/c", "/model/teacher/a"]
    assert sensitive_nodes(sqnr, 1) == []


def test_bias_correction_removes_the_mean_shift_int8_weights_cause(tmp_path):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from quantize.calib import CalibrationReader
    from quantize.runtimes.onnxruntime import correct_bias, quantize_qdq

    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (8, 3, 3, 3)).astype(np.float32)
    w[:, :, 0, 0] *= 40  # one large tap per filter: coarse INT8 steps for the rest of each filter
    b = np.zeros(8, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["y"], pads=[1, 1, 1, 1], name="conv")], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(fp32))
    # inputs far from zero mean: the weight rounding error times the mean is the output shift
    reader = CalibrationReader([(5 + rng.normal(0, 0.3, (1, 3, 16, 16))).astype(np.float32) for _ in range(8)])
    q = quantize_qdq(fp32, tmp_path / "q.onnx", reader, "minmax", "conv", [])

    def shift(path):
        ref, sess = ort.InferenceSession(str(fp32)), ort.InferenceSession(str(path))
        d = [sess.run(None, f)[0] - ref.run(None, f)[0] for f in ({"image": x} for x in reader.inputs)]
        return np.abs(np.mean(d, axis=(0, 1, 3, 4))).mean()

    before = shift(q)
    after = shift(correct_bias(fp32, q, reader))
    assert before > 1e-3 and after < 0.5 * before


def test_strided_calibration_sees_every_image(tmp_path):
    """ORT calibrates a few images at a time (memory); the ranges must still cover the whole set."""
    from onnx import TensorProto, helper, numpy_helper

    from quantize.calib import CalibrationReader
    from quantize.runtimes.onnxruntime import calibration_stride, quantize_qdq

    assert [calibration_stride(n) for n in (1, 7, 9, 12, 64)] == [1, 7, 3, 6, 8]
    w = np.random.default_rng(1).normal(0, 1, (4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [numpy_helper.from_array(w, "w")])
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(fp32))
    inputs = [np.full((1, 3, 8, 8), 0.5, np.float32) for _ in range(9)]  # 9 images: three strides of 3
    inputs[0][0, 0, 0, 0] = -1.0  # the minimum in the first stride
    inputs[-1][0, 0, 0, 0] = 4.0  # the maximum in the last
    q = onnx.load(str(quantize_qdq(fp32, tmp_path / "q.onnx", CalibrationReader(inputs), "minmax", "conv", [])))
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    quant = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "image")
    assert float(inits[quant.input[1]]) == pytest.approx(5.0 / 255, rel=1e-5)
