"""``radius="calibrated"``: its value is q / (2n), its V* covers the mean at about the stated
confidence on simulated data, and every misuse is a ValueError that names it."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dro_rebel import calibrated_radius, robust_weights, worst_case


def expected_radius(n: int, confidence: float) -> float:
    return stats.chi2.ppf(2 * confidence - 1, df=1) / (2 * n)


@given(n=st.integers(1, 10_000), confidence=st.floats(0.51, 0.999))
def test_the_radius_is_the_chi_square_quantile_over_2n(n, confidence):
    assert calibrated_radius(n, confidence) == pytest.approx(expected_radius(n, confidence), rel=1e-9)


@given(n=st.integers(1, 10_000), confidence=st.floats(0.5, 1.0, exclude_min=True, exclude_max=True))
def test_the_radius_is_the_one_python_s_normal_quantile_gives_to_the_last_bit(n, confidence):
    # The core computes Phi^-1 with AS241, as statistics.NormalDist does, in the same operations.
    z = NormalDist().inv_cdf(confidence)
    assert calibrated_radius(n, confidence) == z * z / (2.0 * n)


def test_at_95_percent_it_is_1_353_over_n():
    assert calibrated_radius(1) == pytest.approx(2.7055 / 2, abs=1e-4)
    assert calibrated_radius(200) == pytest.approx(1.35277 / 200, rel=1e-4)


@settings(max_examples=50)
@given(n=st.integers(2, 300), seed=st.integers(0, 2**32 - 1), ambiguity=st.sampled_from(["chi2", "kl"]))
def test_worst_case_reports_the_radius_it_used_and_the_fast_path_agrees(n, seed, ambiguity):
    losses = np.random.default_rng(seed).exponential(size=n)
    kept = losses.copy()
    solution = worst_case(losses, ambiguity, radius="calibrated")
    assert solution.radius == pytest.approx(calibrated_radius(n))
    explicit = robust_weights(losses, ambiguity, radius=calibrated_radius(n))
    np.testing.assert_array_equal(robust_weights(losses, ambiguity, radius="calibrated"), explicit)
    np.testing.assert_array_equal(solution.weights, explicit)
    np.testing.assert_array_equal(losses, kept)


def test_with_groups_n_is_the_number_of_groups():
    losses = np.random.default_rng(0).exponential(size=60)
    groups = np.arange(60) % 7 * 3  # seven labels, not 0..6
    solution = worst_case(losses, "chi2", radius="calibrated", confidence=0.9, groups=groups)
    assert solution.radius == pytest.approx(expected_radius(7, 0.9))


def test_rows_share_one_radius_and_rows_of_groups_must_agree_on_their_count():
    losses = np.random.default_rng(1).exponential(size=(3, 40))
    assert worst_case(losses, "kl", radius="calibrated").radius == pytest.approx(calibrated_radius(40))
    groups = np.tile(np.arange(40) % 4, (3, 1))
    assert worst_case(losses, "kl", radius="calibrated", groups=groups).radius == pytest.approx(calibrated_radius(4))
    groups[1] = np.arange(40) % 5
    with pytest.raises(ValueError, match="same number of groups in every row"):
        worst_case(losses, "kl", radius="calibrated", groups=groups)


@pytest.mark.parametrize("ambiguity", ["chi2", "kl"])
def test_v_star_covers_the_true_mean_at_about_the_stated_confidence(ambiguity):
    # A skewed loss (gamma, shape 4, mean 4): the bound is one-sided and asymptotically
    # exact, so at n = 400 its coverage is near the level, on either side of it.
    rng = np.random.default_rng(2026)
    trials, n, shape = 2000, 400, 4.0
    for confidence in (0.8, 0.95):
        covered = [
            worst_case(rng.gamma(shape, size=n), ambiguity, radius="calibrated", confidence=confidence).value >= shape
            for _ in range(trials)
        ]
        assert abs(np.mean(covered) - confidence) < 0.025, (confidence, np.mean(covered))


BAD = [
    ({"radius": "calibrated", "confidence": 0.5}, "confidence must be in \\(0.5, 1\\)"),
    ({"radius": "calibrated", "confidence": 1.0}, "confidence must be in \\(0.5, 1\\)"),
    ({"radius": "calibrated", "confidence": float("nan")}, "confidence must be in \\(0.5, 1\\)"),
    ({"radius": "calibrated", "confidence": "high"}, "confidence must be a number"),
    ({"radius": 0.1, "confidence": 0.9}, 'confidence= sets the level of radius="calibrated"'),
    ({"confidence": 0.9}, 'confidence= sets the level of radius="calibrated"'),
    ({"radius": "calibrated", "penalty": 1.0}, "give it or penalty=, not both"),
    ({"radius": "calibrate"}, "radius must be a number or \"calibrated\", got 'calibrate'"),
]


@pytest.mark.parametrize("kwargs, message", BAD)
@pytest.mark.parametrize("function", [robust_weights, worst_case])
def test_misuse_is_a_value_error_that_names_it(function, kwargs, message):
    with pytest.raises(ValueError, match=message):
        function(np.ones(4), "chi2", **kwargs)


@pytest.mark.parametrize("ambiguity", ["cvar", "tv", "wasserstein"])
def test_calibrated_is_for_chi2_and_kl_only(ambiguity):
    with pytest.raises(ValueError, match=f"defined for the chi2 and kl sets, not '{ambiguity}'"):
        robust_weights(np.ones(4), ambiguity, radius="calibrated")


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_calibrated_radius_wants_a_positive_count(n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        calibrated_radius(n)
