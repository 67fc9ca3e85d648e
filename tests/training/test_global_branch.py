"""The global branch (PUAD): a Gaussian of the image's mean teacher features, fused into the image score."""

import pytest
import torch

from training.models import build_model


def _parts(n: int, missing: bool = False, seed: int = 0) -> torch.Tensor:
    """Grey boards with three dark parts in fixed places (the good product); `missing` leaves one out."""
    gen = torch.Generator().manual_seed(seed)
    x = 0.7 + 0.03 * torch.randn(n, 3, 64, 64, generator=gen)
    for i, (r, c) in enumerate([(8, 8), (8, 40), (40, 24)]):
        if missing and i == 2:
            continue
        x[:, :, r : r + 16, c : c + 16] = 0.15 + 0.03 * torch.randn(n, 3, 16, 16, generator=gen)
    return x.clamp(0, 1)


def test_global_score_flags_a_missing_part_and_is_fused_as_a_scaled_z_score():
    torch.manual_seed(0)
    model = build_model("efficientad-tiny", {"pretrained_backbone": False}, 64).eval()
    model.prepare(_parts(24), progress=False)
    good, val = _parts(8, seed=1), _parts(12, seed=2)
    model.calibrate(val)
    with torch.no_grad():
        _, g_good = model.raw(good)
        _, g_bad = model.raw(_parts(4, missing=True, seed=3))
        pooled = model._pool(model._normalise(model.raw(val)[0]))[1]
        _, g_val = model.raw(val)
        _, fused = model(val)
    assert float(g_bad.min()) > float(g_good.max())  # a missing part moves the image's mean features
    # on good images the global term has the pooled score's spread (weight 1) and mean zero
    term = fused - pooled
    assert float(term.mean()) == pytest.approx(0.0, abs=1e-4 * float(pooled.std()))
    assert float(term.std()) == pytest.approx(float(pooled.std()), rel=1e-3)
    assert float(model.global_mean) == pytest.approx(float(g_val.mean()), rel=1e-5)


def test_global_weight_zero_leaves_the_pooled_map_score():
    model = build_model("efficientad-tiny", {"pretrained_backbone": False, "global_weight": 0}, 64).eval()
    model.prepare(_parts(8), progress=False)
    model.calibrate(_parts(6, seed=1))
    assert not hasattr(model, "gl_whiten") and float(model.global_gain) == 0.0
    with torch.no_grad():
        maps, g = model.raw(_parts(2, seed=4))
        _, score = model(_parts(2, seed=4))
    assert g is None
    assert torch.allclose(score, model._pool(model._normalise(maps))[1])


def test_shrunk_covariance_is_well_conditioned_with_fewer_images_than_channels():
    model = build_model("efficientad-tiny", {"pretrained_backbone": False}, 64)
    c = model.gl_whiten.shape[0]
    x = torch.randn(10, c, generator=torch.Generator().manual_seed(0))  # 10 images, c >> 10 channels
    model._fit_global(x)
    w = model.gl_whiten.double()
    cov = torch.linalg.inv(w.T @ w)
    eig = torch.linalg.eigvalsh(cov)
    assert float(eig.min()) > 0 and float(eig.max() / eig.min()) < 1e3
    assert torch.allclose(model.gl_mean[0], x.mean(dim=0), atol=1e-6)
