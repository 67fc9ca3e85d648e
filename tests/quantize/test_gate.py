"""The FP32-vs-INT8 gate: every check the README names, one set of defaults, a failure that names the fix."""

import numpy as np

from quantize.gate import gate_report


def _maps(n: int) -> np.ndarray:
    return np.zeros((n, 4, 4))


def test_gate_fails_when_int8_rejects_every_good_part():
    """ux-r2 E4: FAR 0 -> 1.0 at the deployed threshold with the AUROC unchanged passed the gate."""
    labels = np.array([0, 1])
    fs, qs = np.array([0.1, 0.9]), np.array([0.6, 0.9])  # same ranking; INT8's good part is over its threshold
    rep = gate_report(labels, None, (_maps(2), fs), (_maps(2), qs), 0.5, 0.5, 0.005)
    assert rep["image_auroc_drop"] == 0 and rep["false_alarm_rate_change"] == 1.0
    assert not rep["passed"]
    from quantize.gate import gate_failure

    assert rep["failed"] == ["false_alarm_rate_change"]
    msg = gate_failure(rep)
    assert "false-alarm" in msg and "--max-far-increase" in msg and "1 good" in msg and "\n" not in msg


def test_far_bound_is_configurable_and_a_decrease_passes():
    labels = np.r_[np.zeros(10, int), np.ones(10, int)]
    fs = np.r_[np.linspace(0, 0.4, 10), np.linspace(0.6, 1, 10)]
    qs = fs.copy()
    qs[9] = 0.55  # one good part of ten over the threshold: +0.1
    rep = gate_report(labels, None, (_maps(20), fs), (_maps(20), qs), 0.5, 0.5, 0.005)
    assert not rep["passed"] and rep["failed"] == ["false_alarm_rate_change"]
    wider = gate_report(labels, None, (_maps(20), fs), (_maps(20), qs), 0.5, 0.5, 0.005, max_far_increase=0.1)
    assert wider["passed"]
    assert gate_report(labels, None, (_maps(20), qs), (_maps(20), fs), 0.5, 0.5, 0.005)["passed"]  # fewer alarms


def test_gate_checks_the_aupro_drop_where_masks_exist():
    labels = np.array([0, 0, 1, 1])
    masks = np.zeros((4, 8, 8), bool)
    masks[2:, 2:4, 2:4] = True
    fm = np.zeros((4, 8, 8))
    fm[2:, 2:4, 2:4] = 1.0  # FP32 map hot exactly on the defect
    qm = np.zeros((4, 8, 8))
    qm[2:, 5:7, 5:7] = 1.0  # INT8 map hot elsewhere
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    rep = gate_report(labels, masks, (fm, scores), (qm, scores), 0.5, 0.5, 0.05)
    assert rep["image_auroc_drop"] == 0 and rep["aupro_drop"] > 0.05
    assert not rep["passed"] and rep["failed"] == ["aupro_drop"]


def test_auroc_failure_names_the_fix_and_the_resolution():
    from quantize.gate import gate_failure

    labels = np.r_[np.zeros(6, int), np.ones(6, int)]
    fs = np.r_[np.linspace(0, 0.4, 6), np.linspace(0.6, 1, 6)]
    qs = fs.copy()
    qs[5], qs[6] = qs[6], qs[5]  # one swapped good/defect pair
    rep = gate_report(labels, None, (_maps(12), fs), (_maps(12), qs), 2.0, 2.0, 0.005)
    assert rep["failed"] == ["image_auroc_drop"]
    msg = gate_failure(rep)
    assert "image-AUROC drop" in msg and "--max-drop" in msg and "--precision fp32" in msg and "0.0278" in msg


def test_edge_quantize_and_edge_deploy_gate_with_the_same_defaults(tmp_path, monkeypatch):
    import inspect

    import quantize.cli as qcli
    from deploy.cli import _quantized
    from quantize.gate import MAX_DROP, MAX_FAR_INCREASE

    a = qcli.build_parser().parse_args(["run", "--runtime", "onnxruntime"])
    assert (a.max_drop, a.max_far_increase) == (MAX_DROP, MAX_FAR_INCREASE)
    ps = inspect.signature(qcli.quantize_run).parameters
    assert (ps["max_drop"].default, ps["max_far_increase"].default) == (MAX_DROP, MAX_FAR_INCREASE)
    # edge-deploy (no quant.json yet) quantizes with the same bounds and edge-quantize's other defaults
    calls = []
    monkeypatch.setattr(qcli, "quantize_run", lambda *args, **kw: calls.append((args, kw)) or {})
    _quantized(tmp_path, "onnxruntime", MAX_DROP, "CPU")
    (args, kw), = calls
    assert args == (tmp_path, "onnxruntime", MAX_DROP) and kw == {"device": "CPU", "max_far_increase": MAX_FAR_INCREASE}
