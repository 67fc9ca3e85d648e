"""Export a trained model to one ONNX graph with the fixed I/O contract, plus its metadata file.

Contract v1: input `image` float32 [1,3,S,S] RGB in [0,1]; outputs `anomaly_map` float32 [1,1,S,S]
(normalised) and `score` float32 [1]. Static shape, opset 17. All normalisation is inside the graph.
"""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge.contract import INPUT_NAME, OUTPUT_NAMES, ModelCard, Normalisation, ThresholdBasis, input_spec, output_spec
from training import __version__
from training.errors import ExportError
from training.run import RunState

__all__ = ["export_onnx", "OPSET", "check_parity", "metadata"]

OPSET = 17


class _Contract(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(image)


def check_parity(onnx_path: Path, model: nn.Module, images: torch.Tensor, tol: float = 1e-4) -> dict[str, float]:
    """Run images through ONNX Runtime and PyTorch; raise ExportError beyond tol (scaled by the score)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst_map = worst_score = 0.0
    with torch.no_grad():
        for img in images:
            x = img[None].contiguous()
            t_map, t_score = model(x)
            o_map, o_score = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})
            if o_map.shape != tuple(t_map.shape) or o_score.shape != tuple(t_score.shape):
                raise ExportError(f"{onnx_path}: ORT output shapes {o_map.shape}, {o_score.shape} break the contract")
            scale = max(1.0, float(t_score.abs().max()))
            worst_map = max(worst_map, float(np.abs(o_map - t_map.numpy()).max()) / scale)
            worst_score = max(worst_score, float(np.abs(o_score - t_score.numpy()).max()) / scale)
    if worst_map > tol or worst_score > tol:
        raise ExportError(
            f"{onnx_path}: ONNX Runtime differs from PyTorch (map {worst_map:.2e}, score {worst_score:.2e}, "
            f"tolerance {tol:.0e}); the graph is not a faithful export"
        )
    return {"max_abs_diff_map": worst_map, "max_abs_diff_score": worst_score}


def metadata(state: RunState) -> ModelCard:
    """The run's model card (model.json), the typed hand-off quantize and deploy read."""
    m = state.model
    return ModelCard(
        **m.describe(),
        model=state.config.model,
        input=input_spec(m.size_px),
        outputs=output_spec(m.size_px),
        size_px=m.size_px,
        threshold=state.threshold,
        false_alarm_rate_target=state.config.false_alarm_rate,
        normalisation=Normalisation(q_lo=m.q_lo.tolist(), q_hi=m.q_hi.tolist(), map_weight=m.map_weight.tolist(),
                                    score_pool=m.score_pool, score_k=m.score_k, position_norm=m.position_norm),
        training_data_fingerprint=state.fingerprint,
        dataset=state.meta.get("dataset"),
        lineside_version=__version__,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        opset=OPSET,
        threshold_basis=ThresholdBasis(**state.threshold_basis()),
    )


def export_onnx(state: RunState, out_dir: Path, parity_images: torch.Tensor | None = None) -> Path:
    """Write out_dir/model.onnx and out_dir/model.json; check the graph and its ORT parity."""
    import onnx

    model = state.model.eval()
    s = model.size_px
    path = out_dir / "model.onnx"
    x = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about constant shapes: the shape is static by contract
        torch.onnx.export(
            _Contract(model).eval(), (x,), str(path), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )
    proto = _static_outputs(onnx.load(str(path)), s)
    onnx.save(proto, str(path))
    onnx.checker.check_model(proto, full_check=True)
    _check_contract(proto, s, path)
    imgs = parity_images if parity_images is not None else x
    parity = check_parity(path, model, imgs[:4])
    card = metadata(state)
    card.parity = parity  # type: ignore[attr-defined] - an extra field: the parity measured at export
    card.write(out_dir / "model.json")
    return path


def _static_outputs(proto: Any, s: int) -> Any:
    """Write the contract's static output shapes into the graph (the tracer leaves them symbolic);
    the parity check then confirms ORT really produces these shapes."""
    spec = output_spec(s)
    for v in proto.graph.output:
        if v.name not in spec:
            continue  # not the contract's: _check_contract names what is missing
        want = spec[v.name]["shape"]
        dims = v.type.tensor_type.shape.dim
        while len(dims) > len(want):
            dims.pop()
        for i, d in enumerate(want):
            if i < len(dims):
                dims[i].ClearField("dim_param")
                dims[i].dim_value = d
            else:
                dims.add().dim_value = d
    return proto


def _check_contract(proto: Any, s: int, path: Path) -> None:
    """Raise ExportError unless the graph's inputs and outputs are the contract's names, float32 and shapes."""
    import onnx

    def described(v: Any) -> str:
        return f"{onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)}{_shape(v)}"

    ins = {v.name: v for v in proto.graph.input}
    outs = {v.name: v for v in proto.graph.output}
    inp = input_spec(s)
    wanted = [("input", ins, INPUT_NAME, inp["shape"])]
    wanted += [("output", outs, name, o["shape"]) for name, o in output_spec(s).items()]
    for kind, have, name, shape in wanted:
        v = have.get(name)
        if v is None or _shape(v) != shape or v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            got = described(v) if v is not None else f"missing (the graph's {kind}s: {sorted(have)})"
            raise ExportError(f"{path}: {kind} '{name}' must be float32{shape}, got {got}")


def _shape(v: Any) -> list[int]:
    return [d.dim_value for d in v.type.tensor_type.shape.dim]
