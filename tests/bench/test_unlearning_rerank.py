"""The unlearning bench's re-ranking score (bench/unlearning.py) is robust to one outlier."""

from __future__ import annotations

import numpy as np
import pytest

from bench.unlearning import robust_score


def test_robust_score_is_median_minus_scaled_mad() -> None:
    vals = [0.1, 0.2, 0.3, 0.4, 0.5]
    # median 0.3; |v - 0.3| = .2 .1 0 .1 .2 -> MAD 0.1
    assert robust_score(vals, 0.5) == pytest.approx(0.3 - 0.5 * 1.4826 * 0.1)
    assert robust_score([0.2] * 4, 1.0) == pytest.approx(0.2)


def test_one_outlier_does_not_decide() -> None:
    steady = [0.30, 0.31, 0.29, 0.30, 0.32, 0.28]
    spiky = [0.40, 0.41, 0.39, 0.40, 0.42, -2.0]  # better, but one loaded-machine time spike
    assert robust_score(spiky) > robust_score(steady)
    assert np.mean(spiky) - 0.5 * np.std(spiky, ddof=1) < robust_score(steady)
    # a configuration that is erratic on many seeds still loses
    erratic = [0.6, -0.2, 0.5, -0.1, 0.6, -0.3]
    assert robust_score(erratic) < robust_score(steady)
