import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training.models import MODELS, build_model
from training.models.snc import SncHead
from training.errors import TrainConfigError


def test_trained_run_separates_defects_and_exports_the_contract(tiny_run):
    report = json.loads((tiny_run / "model.json").read_text())
    proto = onnx.load(str(tiny_run / "model.onnx"))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == 17
    ins = {i.name: i for i in proto.graph.input}
    outs = {o.name: o for o in proto.graph.output}
    assert list(ins) == ["image"] and set(outs) == {"anomaly_map", "score"}
    dims = lambda v: [d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(ins["image"]) == [1, 3, 64, 64] and dims(outs["anomaly_map"]) == [1, 1, 64, 64] and dims(outs["score"]) == [1]
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in [*ins.values(), *outs.values()])
    assert report["parity"]["max_abs_diff_score"] < 1e-4
    assert report["threshold"] > 0


def test_ort_matches_torch_on_new_input(tiny_run):
    from training.run import load_run

    state = load_run(tiny_run)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        t_map, t_score = state.model(x)
    o_map, o_score = ort.InferenceSession(str(tiny_run / "model.onnx")).run(None, {"image": x.numpy()})
    assert np.abs(o_map - t_map.numpy()).max() < 1e-4 * max(1, float(t_score))
    assert abs(float(o_score[0]) - float(t_score[0])) < 1e-4 * max(1, float(t_score))


def test_training_report_beats_chance(tiny_run, tiny_data):
    from training.data import open_dataset
    from training.evaluate import evaluate
    from training.run import load_run

    rep, _ = evaluate(load_run(tiny_run), open_dataset(tiny_data))
    assert rep["image_auroc_by_kind"]["structural"] > 0.6
    assert 0 <= rep["false_alarm_rate"] <= 1
    # localisation is reported per kind too: a missing part's mask is not where a local method can point
    assert set(rep["aupro_by_kind"]) == set(rep["image_auroc_by_kind"]) == {"logical", "structural"}
    assert all(0 <= v <= 1 for v in rep["aupro_by_kind"].values())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_has_a_working_training_step(name):
    from training.models.base import TrainBatch

    params = {"size": "tiny"} if name.startswith("efficientad") else {}
    m = build_model(name, {**params, "pretrained_backbone": False}, 64)
    x = torch.rand(2, 3, 64, 64)
    m.prepare(x, progress=False)
    losses = m.training_losses(TrainBatch(torch.arange(2), x), 0.0)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    m.eval()
    amap, score = m(x[:1])
    assert amap.shape == (1, 1, 64, 64) and score.shape == (1,)


@pytest.mark.parametrize("name, params", [("efficientad-s", {"size": "tiny"}), ("efficientad-s", {"teacher": "lite0"}),
                                          ("ast", {}), ("fcl", {})])
def test_a_training_step_runs_on_the_device_the_model_moved_to(name, params):
    """fit() prepares on the CPU, then moves the model (CUDA where present): every tensor a loss reads (cached
    teacher features, penalty images) must follow. No GPU here, so the 'meta' device stands in: like CUDA,
    it refuses to mix with CPU tensors."""
    import torch.fx.experimental._config as fx_config

    from training.models.base import TrainBatch

    m = build_model(name, {**params, "pretrained_backbone": False}, 64)
    m.prepare(torch.rand(4, 3, 64, 64), progress=False)
    m.to("meta")
    batch = TrainBatch(torch.arange(2), torch.rand(2, 3, 64, 64, device="meta"))
    # meta tensors have no values: let boolean masks (the hard-feature loss) assume every element is kept
    with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        for done in (0.0, 0.9):  # AST trains its teacher first, then the student against it
            losses = m.training_losses(batch, done)
            assert losses["loss"].device.type == "meta"


@pytest.mark.parametrize("mode", ["truncate", "hinge"])
def test_margin_constraint_changes_the_ae_loss(mode):
    from training.models.base import TrainBatch

    base = {"size": "tiny", "pretrained_backbone": False, "penalty": False}
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = {}
    for enabled in (False, True):
        torch.manual_seed(0)
        m = build_model("efficientad-tiny", {**base, "margin": {"enabled": enabled, "mode": mode, "quantile": 0.9}}, 64)
        m.prepare(x, progress=False)
        out[enabled] = m.training_losses(TrainBatch(torch.arange(2), x), 0.0)
    assert float(out[True]["ae"]) < float(out[False]["ae"])  # distinctive elements left out of the AE loss
    assert ("separation" in out[True]) == (mode == "hinge")


def test_unknown_param_is_refused():
    with pytest.raises(TrainConfigError, match="params.tacher"):
        build_model("efficientad-s", {"tacher": "lite0"}, 64)


def test_snc_codes_only_the_neighbourhood():
    f = torch.zeros(1, 2, 7, 7)
    f[0, 0, 3, 3] = 9.0
    code = SncHead(2, kernel=3)(f)
    assert code.shape == (1, 4, 7, 7)
    changed = code.abs().sum(dim=1)[0] > 0
    assert changed[2:5, 2:5].all() and changed.sum() == 9  # the impulse reaches exactly its 3x3 neighbourhood
    assert code[0, 2, 3, 3] == pytest.approx(9.0 - 1.0)  # contrast to the neighbourhood mean (9 / 9)


@pytest.mark.parametrize("name, params", [("efficientad-tiny", {}), ("efficientad-tiny", {"student_stages": [3]}),
                                          ("efficientad-tiny", {"score_pool": "top", "score_top": 0.05}), ("ast-tiny", {}), ("ast-tiny", {"global_branch": True}),
                                          ("fcl-tiny", {}), ("fcl-tiny", {"global_branch": False}),
                                          ("efficientad-tiny", {"position_norm": True, "map_weights": [1, 0, 2]})])
def test_every_family_fits_exports_and_matches_ort(name, params, tiny_data, tmp_path):
    from training.config import FitConfig
    from training.data import open_dataset
    from training.export import check_parity
    from training.inference import load_images
    from training.pipeline import train_run

    cfg = FitConfig(model=name, params=params, size_px=64, steps=4, batch_size=2)
    data = open_dataset(tiny_data)
    result = train_run(cfg, data, tmp_path, progress=False, evaluate=False)  # parity on held-out good images
    path = result.onnx_path
    check_parity(path, result.state.model, load_images(data.test[-3:], 64))  # and on defects; raises if not
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["family"] == name.split("-")[0] and meta["contract_version"] == 1
    assert meta["normalisation"]["position_norm"] is bool(params.get("position_norm"))
    sess = ort.InferenceSession(str(path))
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert [(o.name, o.shape) for o in sess.get_outputs()] == [("anomaly_map", [1, 1, 64, 64]), ("score", [1])]
    if params.get("position_norm"):  # the per-position scale was fitted, exported (parity above) and reloads
        from training.run import load_run

        loaded = load_run(tmp_path).model
        assert not torch.all(result.state.model.pos_scale == 1)
        assert loaded.position_norm and torch.equal(loaded.pos_scale, result.state.model.pos_scale)


@pytest.mark.parametrize("name", ["efficientad-tiny", "ast-tiny", "fcl-tiny"])
def test_top_pooling_scores_the_mean_of_the_hottest_share_of_the_map(name):
    params = {"pretrained_backbone": False, "score_pool": "top", "score_top": 0.02}
    m = build_model(name, params, 64).eval()
    m.prepare(torch.rand(2, 3, 64, 64), progress=False)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        amap, score = m(x)
    flat = amap.flatten(1)
    k = round(0.02 * 64 * 64)
    assert m.score_k == k
    expected = flat.sort(dim=1, descending=True).values[:, :k].mean(dim=1)
    assert torch.allclose(score, expected)
    assert (score < flat.amax(dim=1)).all() and (score > flat.mean(dim=1)).all()


def test_flow_teacher_is_invertible():
    from training.models.ast import FlowTeacher, positional_encoding

    flow = FlowTeacher(12, 8, blocks=3, hidden=16, clamp=1.9)
    for p in flow.parameters():  # leave the identity start so the test exercises real couplings
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 12, 6, 6, dtype=torch.float64)
    cond = positional_encoding(8, 6, 6)[None].expand(2, -1, -1, -1).double()
    flow = flow.double()
    z, logdet = flow(x, cond)
    assert not torch.allclose(z, x) and logdet.abs().sum() > 0
    assert torch.allclose(flow.inverse(z, cond), x, atol=1e-10)


def test_fcl_snc_option_changes_the_codes():
    a = build_model("fcl-tiny", {"pretrained_backbone": False}, 64)
    b = build_model("fcl-tiny", {"pretrained_backbone": False, "snc": False}, 64)
    assert isinstance(a.sncs[0], SncHead) and not isinstance(b.sncs[0], SncHead)


def test_per_position_gaussian_flags_the_odd_position_and_map_weights_drop_the_autoencoder():
    model = build_model("efficientad-tiny", {"pretrained_backbone": False, "map_weights": [1, 0, 2],
                                             "gaussian_dims": 8}, 64)
    assert model.ae is None and model.map_weight.tolist() == pytest.approx([1 / 3, 2 / 3])
    g = model.grid
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(40, model.channels, g, g, generator=gen)
    model._fit_gaussian(feats)
    probe = torch.randn(1, model.channels, g, g, generator=gen)
    probe[0, :, 3, 5] += 8.0  # one grid cell far from every good sample
    m = model._gauss_map(probe)[:, 0]
    assert divmod(int(m.flatten().argmax()), g) == (3, 5)
    assert float(m[0, 3, 5]) > 5 * float(m.median())


def test_gaussian_projection_is_the_exact_leading_pca_subspace_whatever_the_random_state():
    model = build_model("efficientad-tiny", {"pretrained_backbone": False, "gaussian_dims": 4}, 64)
    g, c = model.grid, model.channels
    gen = torch.Generator().manual_seed(0)
    scales = torch.ones(c)
    scales[:4] = torch.tensor([9.0, 7.0, 5.0, 3.0])  # four dominant channels: the leading subspace is known
    feats = torch.randn(12, c, g, g, generator=gen) * scales.view(1, c, 1, 1)
    projections = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model._fit_gaussian(feats)
        projections.append(model.g_proj.view(4, c).clone())
    assert torch.equal(projections[0], projections[1])
    assert projections[0][:, 4:].abs().max() < 0.05  # spans the four dominant channels only


def test_student_regresses_only_its_stages_while_the_gaussian_models_all():
    m = build_model("efficientad-tiny", {"pretrained_backbone": False, "student_stages": [3], "gaussian_dims": 8}, 64).eval()
    stage3 = m.teacher.backbone.channels[0]
    assert m.channels == stage3 and m.g_proj.shape[1] == m.teacher.out_channels
    x = torch.rand(3, 3, 64, 64)
    m.prepare(x, progress=False)
    with torch.no_grad():
        t, s = m._teacher(x), m.student(x)
        st_map = m.raw_maps(x)[0]
    assert s.shape[1] == 2 * stage3  # the student's second half mimics the autoencoder on the same channels
    assert torch.allclose(st_map, (t[:, :stage3] - s[:, :stage3]).pow(2).mean(dim=1, keepdim=True))
    with pytest.raises(TrainConfigError, match="student_stages"):
        build_model("efficientad-tiny", {"pretrained_backbone": False, "student_stages": [2]}, 64)
    with pytest.raises(TrainConfigError, match="lite0"):
        build_model("efficientad-s", {"teacher": "pdn", "gaussian_stages": [3]}, 64)


def test_student_teacher_map_weight_must_be_positive():
    with pytest.raises(TrainConfigError, match="map_weights"):
        build_model("efficientad-tiny", {"pretrained_backbone": False, "map_weights": [0, 1, 1]}, 64)


def test_efficientad_teacher_scale_sets_the_lite_input_size():
    seen = {}
    for scale in (1, 2):
        m = build_model("efficientad-tiny", {"teacher_scale": scale, "pretrained_backbone": False}, 64).eval()
        m.teacher.backbone.register_forward_pre_hook(lambda mod, args, s=scale: seen.__setitem__(s, args[0].shape[-1]))
        m.prepare(torch.rand(2, 3, 64, 64), progress=False)
        amap, _ = m(torch.rand(1, 3, 64, 64))
        assert amap.shape == (1, 1, 64, 64)
    assert seen == {1: 64, 2: 128}


def test_shipped_pdn_teacher_is_the_default_and_runs_efficientad():
    m = build_model("efficientad-s", {"teacher": "pdn", "gaussian": False}, 64).eval()
    assert not any(p.requires_grad for p in m.teacher.parameters())
    feats = m.teacher(torch.rand(2, 3, 64, 64))
    assert feats.shape == (2, 232, 16, 16) and torch.isfinite(feats).all() and float(feats.std()) > 0.1


def test_channel_equalisation_keeps_the_function_and_evens_activation_ranges():
    from training.models.pdn import PDN_WIDTHS, Pdn, equalize_channels

    torch.manual_seed(0)
    pdn = Pdn(8, PDN_WIDTHS["tiny"]).eval()
    with torch.no_grad():  # a distilled net's spread: some channels 30x louder than others
        pdn.net[0].weight[:4] *= 30.0
    x = torch.rand(4, 3, 32, 32)
    peaks = {}
    hooks = [pdn.net[i].register_forward_hook(lambda m, a, o, i=i: peaks.__setitem__(i, o.amax(dim=(0, 2, 3))))
             for i in (1, 4, 7)]  # the ReLU outputs INT8 activations see
    with torch.no_grad():
        before = pdn(x)
        spread_before = float(peaks[1].max() / peaks[1][peaks[1] > 0].min())
        equalize_channels(pdn, x)
        after = pdn(x)
    for h in hooks:
        h.remove()
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-5)
    assert spread_before > 10
    live = peaks[1][peaks[1] > 0]
    assert float(live.max() / live.min()) < spread_before / 5


def test_time_budget_sets_the_schedule_so_ast_trains_its_student(tmp_path, tiny_data):
    """With --max-minutes and far more steps than fit in it, AST still reaches its student phase."""
    import json

    from training.config import FitConfig
    from training.data import open_dataset
    from training.loop import fit

    cfg = FitConfig(model="ast-tiny", params={"pretrained_backbone": False}, size_px=64, steps=1_000_000,
                    batch_size=2, max_minutes=0.3, lr_drop_at=0.9)
    state = fit(cfg, open_dataset(tiny_data), tmp_path, progress=False)
    hist = json.loads((tmp_path / "train.json").read_text())["history"]
    assert "flow_nll" in hist[0] and "student" not in hist[0]  # the teacher first
    from training.models import build_model

    untrained = build_model("ast-tiny", {"pretrained_backbone": False}, 64, cfg.seed).student.state_dict()
    trained = state.model.student.state_dict()
    assert any(not torch.equal(untrained[k], trained[k]) for k in untrained)  # then the student learned
    # the loop stops only once its share of the budget (what images, features and calibration leave) is spent
    assert state.meta["train_minutes"] >= state.meta["budget"]["train_min"] - 0.01 and state.meta["steps_done"] < 1_000_000


def test_global_consistency_standardises_its_target_and_maps_on_the_grid():
    from training.models.consistency import GlobalConsistency

    g = GlobalConsistency(64, channels=5, grid=4).eval()
    feats = torch.randn(6, 5, 4, 4) * torch.arange(1.0, 6.0).view(1, 5, 1, 1) + 3.0
    g.fit_stats(feats)
    target = (feats - g.mean) / g.std
    assert target.mean(dim=(0, 2, 3)).abs().max() < 1e-5 and (target.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-5
    m = g(torch.rand(6, 3, 64, 64), feats)
    assert m.shape == (6, 1, 4, 4) and bool((m >= 0).all())
    # a feature grid far from the good ones raises the map exactly where it departs
    odd = feats.clone()
    odd[:, :, 1, 2] += 10 * g.std.view(1, 5)
    diff = g(torch.zeros(6, 3, 64, 64), odd) - g(torch.zeros(6, 3, 64, 64), feats)
    assert int(diff.mean(0)[0].flatten().argmax()) == 1 * 4 + 2


def test_bf16_training_exports_an_fp32_model_and_auto_picks_by_family_and_hardware(tiny_data, tmp_path):
    from training.config import FitConfig
    from training.data import open_dataset
    from training.export import check_parity
    from training.inference import load_images
    from training.pipeline import train_run
    from training.precision import cpu_has_bf16, training_precision

    cfg = FitConfig(model="efficientad-tiny", size_px=64, steps=3, batch_size=2, precision="bf16")
    data = open_dataset(tiny_data)
    result = train_run(cfg, data, tmp_path, progress=False, evaluate=False)  # the export checks parity on val
    state = result.state
    assert json.loads((tmp_path / "train.json").read_text())["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in state.model.parameters())  # autocast: weights stay fp32
    assert all(p.is_contiguous() for p in state.model.parameters())  # channels-last undone before calibration
    check_parity(result.onnx_path, state.model, load_images(data.test[-2:], 64))  # raises on a mismatch
    cpu = torch.device("cpu")
    auto = FitConfig(model="efficientad-tiny")
    assert training_precision(auto, build_model("efficientad-tiny", {}, 64, 0), cpu) == (
        "bf16" if cpu_has_bf16() else "fp32")
    assert training_precision(auto, build_model("ast-tiny", {}, 64, 0), cpu) == "fp32"  # not checked for AST
    assert training_precision(FitConfig(precision="fp32"), build_model("efficientad-tiny", {}, 64, 0), cpu) == "fp32"


def test_position_norm_divides_each_map_by_what_good_images_show_there():
    from training.models.base import POS_GRID, POS_PRIOR

    model = build_model("efficientad-tiny", {"pretrained_backbone": False, "position_norm": True}, 64)
    n = 24
    good = 1.0 + 0.1 * torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    good[:, :, :, 0] *= 5.0  # an edge that is busy on every good part
    model._fit_position_scale(0, good)
    scale = model.pos_scale[0]
    assert scale.shape == (POS_GRID, POS_GRID)
    edge, rest = float(scale[:, :2].mean()), float(scale[:, 2:].mean())
    rel = 5.0 / (1 + 4 / 16)  # the edge column's mean over the map's mean
    assert edge == pytest.approx((n * rel + POS_PRIOR) / (n + POS_PRIOR), rel=0.02)  # shrunk toward 1
    # a good part's busy edge no longer outscores a defect of half its raw height elsewhere
    probe = good[:1].clone()
    probe[0, 0, 8, 8] = 2.5
    scaled = model._scaled(0, probe)
    assert float(scaled[0, 0, 8, 8]) > float(scaled[0, 0, :, 0].max())
    assert float(probe[0, 0, 8, 8]) < float(probe[0, 0, :, 0].max())
    assert rest < 1.0 < edge
    # a map that is not a distance keeps a flat scale; position_norm off leaves the raw map
    model._fit_position_scale(1, good - 2.0)
    assert torch.equal(model.pos_scale[1], torch.ones(POS_GRID, POS_GRID))
    off = build_model("efficientad-tiny", {"pretrained_backbone": False}, 64)  # off unless a recipe asks
    off._fit_position_scale(0, good)
    assert torch.equal(off.pos_scale[0], torch.ones(POS_GRID, POS_GRID))
    assert torch.equal(off._scaled(0, probe), probe)


@pytest.mark.parametrize("defect, message", [
    ("score_int", "output 'score' must be float32[1], got int64[1]"),
    ("map_shape", "output 'anomaly_map' must be float32[1, 1, 8, 8], got float32[1, 1, 4, 4]"),
    ("input_name", "input 'image' must be float32[1, 3, 8, 8], got missing (the graph's inputs: ['x'])"),
])
def test_export_refuses_a_graph_that_breaks_the_contract(defect, message, tmp_path):
    from onnx import TensorProto, helper

    from training.errors import ExportError
    from training.export import _check_contract

    def value(name, dtype, shape):
        return helper.make_tensor_value_info(name, dtype, shape)

    image = value("x" if defect == "input_name" else "image", TensorProto.FLOAT, [1, 3, 8, 8])
    amap = value("anomaly_map", TensorProto.FLOAT, [1, 1, 4, 4] if defect == "map_shape" else [1, 1, 8, 8])
    score = value("score", TensorProto.INT64 if defect == "score_int" else TensorProto.FLOAT, [1])
    graph = helper.make_graph([], "g", [image], [amap, score])
    with pytest.raises(ExportError) as err:
        _check_contract(helper.make_model(graph), 8, tmp_path / "model.onnx")
    assert str(err.value) == f"{tmp_path / 'model.onnx'}: {message}"
