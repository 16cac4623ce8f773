"""The edge cases docs/method.md#edge-cases names, for every set: rho = 0, a radius at or beyond the
largest useful one, all-equal losses, n = 1, points with p_i = 0, losses of any scale; and
2-D input (one problem per row) and groups against solving by hand."""

from __future__ import annotations

import numpy as np
import pytest

from dro_rebel import robust_weights, worst_case

# A size per set that leaves q = p, and one at or beyond the largest useful size for the
# reference below.
LOSSES = np.array([0.3, 2.0, -1.0, 2.0, 0.7, 2.0])
REFERENCE = np.array([1.0, 1.0, 2.0, 3.0, 1.0, 0.0])
P = REFERENCE / REFERENCE.sum()
MASS_AT_MAX = P[[1, 3]].sum()  # the third 2.0 has p = 0

NEUTRAL = [
    ("kl", {"radius": 0.0}),
    ("chi2", {"radius": 0.0}),
    ("cvar", {"alpha": 1.0}),
    ("tv", {"radius": 0.0}),
]
SATURATED = [
    ("kl", {"radius": -np.log(MASS_AT_MAX)}),
    ("kl", {"radius": 1e9}),
    ("chi2", {"radius": 0.5 * (1.0 / MASS_AT_MAX - 1.0)}),
    ("chi2", {"radius": 1e12}),
    ("cvar", {"alpha": MASS_AT_MAX}),
    ("cvar", {"alpha": 1e-9}),
    ("tv", {"radius": 1.0 - MASS_AT_MAX}),
    ("tv", {"radius": 1.0}),
    ("tv", {"radius": 7.0}),
    ("kl", {"penalty": 1e-300}),
    ("chi2", {"penalty": 1e-300}),
]
EVERY = (
    NEUTRAL
    + SATURATED
    + [
        ("kl", {"radius": 0.2}),
        ("chi2", {"radius": 0.2}),
        ("cvar", {"alpha": 0.3}),
        ("tv", {"radius": 0.2}),
        ("kl", {"penalty": 0.5}),
        ("chi2", {"penalty": 0.5}),
    ]
)


def arg_max_weights(losses, p):
    top = losses[p > 0].max()
    q = np.where((losses == top) & (p > 0), p, 0.0)
    return q / q.sum()


@pytest.mark.parametrize("ambiguity,size", NEUTRAL)
def test_zero_radius_gives_the_reference(ambiguity, size):
    solution = worst_case(LOSSES, ambiguity, reference=REFERENCE, **size)
    np.testing.assert_allclose(solution.weights, P, rtol=1e-15, atol=0)
    assert solution.value == pytest.approx(P @ LOSSES, rel=1e-15)


@pytest.mark.parametrize("ambiguity,size", SATURATED)
def test_largest_useful_radius_puts_all_mass_on_the_arg_max(ambiguity, size):
    solution = worst_case(LOSSES, ambiguity, reference=REFERENCE, **size)
    expected = arg_max_weights(LOSSES, P)
    # Ties at the max share in proportion to p (1 : 3 here), the tied loss with p = 0 gets none.
    np.testing.assert_allclose(solution.weights, expected, rtol=1e-9, atol=1e-12)
    assert solution.value == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize("ambiguity,size", EVERY)
@pytest.mark.parametrize("level", [0.0, -3.5, 1e300, 1e-300])
def test_all_equal_losses_give_the_reference(ambiguity, size, level):
    losses = np.full(5, level)
    reference = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    q = robust_weights(losses, ambiguity, reference=reference, **size)
    np.testing.assert_allclose(q, reference / reference.sum(), rtol=1e-15)


@pytest.mark.parametrize("ambiguity,size", EVERY)
@pytest.mark.parametrize("loss", [0.0, -2.0, 1e300, -1e-300])
def test_one_sample_gets_all_the_mass(ambiguity, size, loss):
    solution = worst_case(np.array([loss]), ambiguity, **size)
    assert solution.weights.tolist() == [1.0]
    assert solution.value == loss


@pytest.mark.parametrize("ambiguity,size", EVERY)
def test_points_without_reference_mass_get_none(ambiguity, size):
    # The largest loss has p = 0: it must get nothing, however large the set.
    losses = np.array([1.0, 50.0, 3.0, -2.0, 50.0])
    reference = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    q = robust_weights(losses, ambiguity, reference=reference, **size)
    assert q[1] == 0.0 and q[4] == 0.0
    assert q.sum() == pytest.approx(1.0, abs=1e-12)


EXTREME = [
    [1e300, -1e300, 0.0],
    [1.7976931348623157e308, -1.7976931348623157e308, 1.0],
    [1e-300, 2e-300, -3e-300],
    [5e-324, 1e-323, 0.0],
    [1e300, 1e300 * (1 + 2e-16), 1e300 * (1 - 2e-16)],
    [-1e-300, 1e300, 1e300],
    [1.0, 1.0 + 2.2e-16, 1.0 - 1.1e-16],
]


@pytest.mark.parametrize("ambiguity,size", EVERY)
@pytest.mark.parametrize("losses", EXTREME)
def test_any_scale_stays_finite(ambiguity, size, losses):
    losses = np.array(losses)
    solution = worst_case(losses, ambiguity, **size)
    q = solution.weights
    assert np.all(np.isfinite(q)) and np.all(q >= 0)
    assert q.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.isfinite(solution.value)
    # V* = sum q l is rounded: a few ulps of the largest loss either side.
    slack = 4 * np.finfo(float).eps * np.abs(losses).max()
    with np.errstate(over="ignore"):  # max + slack is inf next to 1.8e308, as it may be
        assert losses.min() - slack <= solution.value <= losses.max() + slack
    # The arg-max always gets at least its share of p.
    assert q[np.argmax(losses)] >= 1.0 / 3.0 * (1 - 1e-12) / np.sum(losses == losses.max())


@pytest.mark.parametrize("ambiguity,size", EVERY)
def test_rows_are_independent_problems(ambiguity, size):
    rng = np.random.default_rng(3)
    losses = rng.normal(size=(7, 12))
    losses[2] = 4.0  # a flat row
    losses[3, :6] = losses[3, 6:]  # ties
    shared = rng.random(12)
    per_row = rng.random((7, 12)) * (rng.random((7, 12)) > 0.3) + np.eye(7, 12)
    for reference in (None, shared, per_row):
        q = robust_weights(losses, ambiguity, reference=reference, **size)
        for k in range(7):
            row_reference = None if reference is None else (reference if reference.ndim == 1 else reference[k])
            expected = robust_weights(losses[k], ambiguity, reference=row_reference, **size)
            np.testing.assert_array_equal(q[k], expected)


@pytest.mark.parametrize("ambiguity,size", EVERY)
def test_many_rows_solved_in_parallel_match_one_by_one(ambiguity, size):
    # 300 x 300 is above the core's threshold for solving rows in parallel.
    losses = np.random.default_rng(4).normal(size=(300, 300))
    solution = worst_case(losses, ambiguity, **size)
    for k in (0, 151, 299):
        single = worst_case(losses[k], ambiguity, **size)
        np.testing.assert_array_equal(solution.weights[k], single.weights)
        assert solution.value[k] == single.value


def solve_groups_by_hand(losses, reference, labels, ambiguity, size):
    p = reference / reference.sum()
    names = np.unique(labels)
    mass = np.array([p[labels == g].sum() for g in names])
    group_losses = np.array([(p[labels == g] @ losses[labels == g]) / m if m > 0 else 0.0 for g, m in zip(names, mass)])
    group_weights = robust_weights(group_losses, ambiguity, reference=mass, **size)
    q = np.zeros_like(losses)
    for g, m, w in zip(names, mass, group_weights):
        if m > 0:
            q[labels == g] = w * p[labels == g] / m
    return q


@pytest.mark.parametrize("ambiguity,size", EVERY)
@pytest.mark.parametrize(
    "labels",
    [
        [0, 0, 1, 1, 2, 2, 0, 1],
        [5, 5, 100, 100, 7, 7, 5, 3],  # sparse labels
        [0, 10**12, 0, 10**12, 3, 3, 3, 0],  # labels far above n (the sorted look-up)
        [0, 1, 2, 3, 4, 5, 6, 7],  # a group per sample: the plain problem
        [4, 4, 4, 4, 4, 4, 4, 4],  # one group: q = p
        [0, 0, 1, 1, 2, 2, 2, 2],  # group 0 has no reference mass
    ],
)
def test_groups_match_solving_the_group_problem_by_hand(ambiguity, size, labels):
    losses = np.array([0.5, 1.5, 3.0, 0.0, 2.0, 2.5, -1.0, 4.0])
    reference = np.array([0.0, 0.0, 1.0, 2.0, 1.0, 1.0, 3.0, 1.0])
    if labels[0] != 0 or labels[1] != 0:
        reference[:2] = 1.0
    labels = np.array(labels)
    q = robust_weights(losses, ambiguity, reference=reference, groups=labels, **size)
    expected = solve_groups_by_hand(losses, reference, labels, ambiguity, size)
    np.testing.assert_allclose(q, expected, rtol=1e-12, atol=1e-15)
    if len(np.unique(labels)) == len(labels):
        plain = robust_weights(losses, ambiguity, reference=reference, **size)
        np.testing.assert_allclose(q, plain, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("ambiguity,size", EVERY)
def test_groups_per_row(ambiguity, size):
    rng = np.random.default_rng(5)
    losses = rng.normal(size=(4, 10))
    labels = rng.integers(0, 3, size=(4, 10))
    q = robust_weights(losses, ambiguity, groups=labels, **size)
    for k in range(4):
        expected = solve_groups_by_hand(losses[k], np.ones(10), labels[k], ambiguity, size)
        np.testing.assert_allclose(q[k], expected, rtol=1e-12, atol=1e-15)


def test_value_and_dual_are_reported_per_row():
    losses = np.array([[0.0, 1.0, 2.0], [3.0, 3.0, 3.0]])
    solution = worst_case(losses, "kl", radius=0.1)
    assert solution.value.shape == (2,) and solution.dual.shape == (2,)
    assert solution.value[1] == 3.0
    assert solution.radius == 0.1
    assert worst_case(losses, "tv", radius=0.1).dual is None
    assert worst_case(losses[0], "chi2", penalty=1.0).radius is None


@pytest.mark.parametrize("gap", [1e-17, 1e-200, 1e-300])
def test_chi2_top_losses_closer_than_the_square_root_of_the_smallest_float(gap):
    # Found by tests/test_reference_solvers.py (thorough profile): below a gap of ~1e-160 the
    # squares underflowed, no segment had a root, and the fallback left V* = -0.2 instead of
    # ~0. The answer does not depend on the gap once it is small.
    solution = worst_case(np.array([-1.0, gap, 0.0]), "chi2", radius=0.7)
    np.testing.assert_allclose(solution.weights, [0.0, 0.8872983346207417, 0.1127016653792583], atol=1e-9)
    assert solution.value >= 0.0


def test_float32_kl_with_a_small_radius_matches_float64():
    # Found by tests/test_invariants.py: deviations from p came out 23% short of the float64
    # answer while the moments were read back from the float32 weights.
    q32 = robust_weights(np.array([0.0, 1.0], np.float32), "kl", radius=1e-8)
    q64 = robust_weights(np.array([0.0, 1.0]), "kl", radius=1e-8)
    np.testing.assert_allclose(q32, q64, rtol=1e-6)


def test_chi2_threshold_exactly_on_tied_losses_keeps_the_value_growing():
    # Found by tests/test_invariants.py: at radius 1 the threshold sits on the four zeros, rounding
    # rejected the roots of both adjacent segments, and the fallback gave V* = 0.5 < V*(0.1) = 0.544.
    losses = np.array([0.0, 0.0, 0.0, 0.0, 1.0, 1.0 - 2.0**-53])
    small = worst_case(losses, "chi2", radius=0.1).value
    large = worst_case(losses, "chi2", radius=1.0)
    assert large.value == pytest.approx(1.0, abs=1e-12)
    assert small < large.value
    q, p = large.weights, np.full(6, 1 / 6)
    assert 0.5 * np.sum((q - p) ** 2 / p) <= 1.0 + 1e-12
