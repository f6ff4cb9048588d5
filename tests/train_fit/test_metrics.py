"""Metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from train.metrics import (
    auc,
    bootstrap_ci,
    paired_bootstrap_diff,
    per_class_log_loss,
    roc_curve,
    sensitivity_specificity,
    threshold_for_sensitivity,
    weighted_log_loss,
)


def test_weighted_log_loss_by_hand() -> None:
    y = np.array([[1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1]])
    p = np.array([[0.9, 0.2, 0.6, 0.1, 0.1, 0.1], [0.3, 0.1, 0.1, 0.1, 0.1, 0.8]])
    per = [
        -(math.log(0.9) + math.log(0.7)) / 2,
        -(math.log(0.8) + math.log(0.9)) / 2,
        -(math.log(0.6) + math.log(0.9)) / 2,
        -(math.log(0.9) + math.log(0.9)) / 2,
        -(math.log(0.9) + math.log(0.9)) / 2,
        -(math.log(0.9) + math.log(0.8)) / 2,
    ]
    expected = (2 * per[0] + sum(per[1:])) / 7
    assert weighted_log_loss(y, p) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(per_class_log_loss(y, p), per, rtol=1e-12)


def test_weighted_log_loss_clips_and_matches_sklearn_per_class() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (200, 6))
    p = rng.random((200, 6))
    p[0, 0] = 0.0  # clipped to 1e-15, finite loss
    per = per_class_log_loss(y, p)
    for c in range(6):
        assert per[c] == pytest.approx(
            log_loss(y[:, c], np.clip(p[:, c], 1e-15, 1 - 1e-15), labels=[0, 1]), rel=1e-9
        )
    assert math.isfinite(weighted_log_loss(y, p))
    # perfect predictions -> (almost) zero loss
    assert weighted_log_loss(y, y.astype(float)) < 1e-12


def test_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(2)
    for _ in range(5):
        y = rng.integers(0, 2, 300)
        s = np.round(rng.random(300) + 0.3 * y, 1)  # many ties
        assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_roc_curve_area_equals_auc() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 100)
    s = rng.random(100) + 0.5 * y
    fpr, tpr, _ = roc_curve(y, s)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc(y, s), abs=1e-12)


def test_bootstrap_ci_brackets_estimate() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 150)
    s = rng.random(150) + 0.6 * y
    ci = bootstrap_ci(y, s, n_boot=300, seed=0)
    assert ci.low <= ci.estimate <= ci.high
    assert 0.5 < ci.low < ci.high <= 1.0


def test_paired_bootstrap_diff() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 200)
    noise = rng.normal(size=200)
    good, weak = noise + 1.5 * y, noise + 0.3 * y
    same = paired_bootstrap_diff(y, good, good, n_boot=200)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    better = paired_bootstrap_diff(y, good, weak, n_boot=300, seed=1)
    assert better.estimate == pytest.approx(auc(y, good) - auc(y, weak))
    assert 0.0 < better.low <= better.estimate <= better.high
    worse = paired_bootstrap_diff(y, weak, good, n_boot=300, seed=1)
    assert worse.high < 0.0
    # pairing resolves a small shift (every resample ranks ``good`` at least as well)
    # although the models' own intervals overlap
    shifted = noise + 1.3 * y
    diff = paired_bootstrap_diff(y, good, shifted, n_boot=300, seed=2)
    ci_good = bootstrap_ci(y, good, n_boot=300, seed=2)
    ci_shifted = bootstrap_ci(y, shifted, n_boot=300, seed=2)
    assert ci_shifted.high > ci_good.low  # the separate intervals overlap
    assert diff.low >= 0.0
    # several runs per model: the mean of the paired differences
    runs = paired_bootstrap_diff(y, [good, weak], [weak, weak], n_boot=200, seed=3)
    assert runs.estimate == pytest.approx((auc(y, good) - auc(y, weak)) / 2)
    assert 0.0 < runs.low <= runs.estimate <= runs.high
    with pytest.raises(ValueError, match="sizes differ"):
        paired_bootstrap_diff(y, good[:10], good)
    with pytest.raises(ValueError, match="sizes differ"):
        paired_bootstrap_diff(y, [good, good], good)


def test_threshold_for_sensitivity() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.4, 0.3, 0.5, 0.2, 0.1, 0.05])
    thr = threshold_for_sensitivity(y, s, 0.75)
    assert thr == pytest.approx(0.4)
    sens, spec = sensitivity_specificity(y, s, thr)
    assert sens == pytest.approx(0.75)
    assert spec == pytest.approx(0.75)
    assert threshold_for_sensitivity(y, s, 1.0) == pytest.approx(0.3)
