"""Threshold calibration and metrics on ROC curves with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from inference import calibration


def test_threshold_on_a_known_roc():
    # 10 positives at 0.55..1.0, 10 negatives at 0.0..0.9 (overlapping tail)
    pos = np.arange(55, 101, 5) / 100
    neg = np.arange(0, 91, 10) / 100
    y = np.r_[np.ones(10), np.zeros(10)]
    s = np.r_[pos, neg]
    thr = calibration.threshold_at_sensitivity(y, s, 0.8)
    # 8th highest positive is 0.65; next lower score overall is 0.6 -> midpoint 0.625
    assert thr == pytest.approx(0.625)
    op = calibration.operating_point(y, s, thr)
    assert op["sensitivity"] == pytest.approx(0.8)
    assert op["specificity"] == pytest.approx(0.7)  # negatives >= 0.625: 0.7, 0.8, 0.9
    assert calibration.auc(y, s) == pytest.approx(0.82)  # 80 wins + 4 ties of 100 pairs


def test_sensitivity_one_and_perfect_separation():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    thr = calibration.threshold_at_sensitivity(y, s, 1.0)
    assert 0.3 < thr < 0.8
    m = calibration.label_metrics(y, s, thr)
    assert (m["sensitivity"], m["specificity"], m["auc"]) == (1.0, 1.0, 1.0)


def test_calibration_rejects_bad_input():
    with pytest.raises(ValueError):
        calibration.threshold_at_sensitivity([0, 0], [0.1, 0.2], 0.9)
    with pytest.raises(ValueError):
        calibration.threshold_at_sensitivity([0, 1], [0.1, 0.2], 0.0)
    assert calibration.auc([1, 1], [0.2, 0.3]) is None


def test_roc_png(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    s = y + rng.normal(0, 0.7, 100)
    path = calibration.plot_roc({"x": (y, s, 0.5)}, tmp_path / "roc.png", "t")
    assert path.stat().st_size > 1000
