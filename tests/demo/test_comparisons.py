"""The paired statistics of the demo's report, against scipy and a hand-worked Holm example."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dro_rebel.demo.comparisons import holm, paired_difference


def test_paired_difference_is_scipys_paired_t_test():
    rng = np.random.default_rng(0)
    control = rng.normal(size=12)
    treated = control + 0.3 + rng.normal(scale=0.5, size=12)
    result = paired_difference(treated, control)
    reference = stats.ttest_rel(treated, control)
    assert result["p"] == pytest.approx(reference.pvalue)
    interval = reference.confidence_interval(0.95)
    assert result["ci95"] == pytest.approx([interval.low, interval.high])
    assert result["mean_difference"] == pytest.approx(np.mean(treated - control))


def test_holm_steps_down_and_stays_monotone():
    # Sorted p: 0.01, 0.02, 0.03, 0.5 -> 4 * 0.01, 3 * 0.02, max(0.06, 2 * 0.03), 0.5.
    assert holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    assert holm([0.9, 0.3]) == pytest.approx([0.9, 0.6])  # capped by the larger one's own value
