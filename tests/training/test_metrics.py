import numpy as np
import pytest

from training.metrics import aupro, auroc, rates_at_threshold, threshold_at_far


def test_auroc_hand_computed():
    # pairs (pos > neg): 3 of 4 correct -> 0.75
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half
    assert np.isnan(auroc([1, 1], [0.1, 0.2]))


def test_aupro_perfect_and_inverted():
    masks = np.zeros((2, 10, 10), bool)
    masks[1, 2:5, 2:5] = True
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0, abs=1e-3)
    assert aupro(masks, (~masks).astype(float)) < 0.05


def test_threshold_from_good_scores_only():
    good = np.linspace(0, 1, 201)
    thr = threshold_at_far(good, 0.005)
    assert thr == pytest.approx(0.995)
    r = rates_at_threshold([0, 0, 1, 1], [0.1, 0.999, 0.5, 2.0], thr)
    assert r == {"false_alarm_rate": 0.5, "miss_rate": 0.5}
