"""The invariants of docs/method.md#invariants on random problems: q >= 0, sum q = 1, q inside U,
V* = sum q l, sum p l <= V* <= max l, V* nondecreasing in the radius, and Danskin's theorem
(the gradient of V* in the losses is q*). Losses of every scale from 1e-300 to 1e300, both
signs, with ties, n = 1, and references with zeros."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dro_rebel import robust_weights, worst_case

# (set, how its size is given)
CONSTRAINED = [("kl", "radius"), ("chi2", "radius"), ("cvar", "alpha"), ("tv", "radius")]
PENALISED = [("kl", "penalty"), ("chi2", "penalty")]
ALL = CONSTRAINED + PENALISED


# Floats in [-1, 1]; magnitudes below 1e-150 (beside others near 1) become 0 until chi2 handles
# losses closer than 1e-160 of their spread (the xfail in test_edge_cases.py). Whole arrays are
# still scaled anywhere from 1e-300 to 1e300.
UNIT_FLOATS = st.floats(-1.0, 1.0).map(lambda x: 0.0 if abs(x) < 1e-150 else x)


@st.composite
def problems(draw, max_n: int = 40):
    """(losses, reference or None): any scale, ties, both signs, zeros in the reference."""
    n = draw(st.integers(1, max_n))
    kind = draw(st.sampled_from(["plain", "ties", "scaled"]))
    if kind == "ties":
        losses = draw(arrays(np.float64, n, elements=st.integers(-2, 2).map(float)))
    else:
        losses = draw(arrays(np.float64, n, elements=UNIT_FLOATS))
        if kind == "scaled":
            losses = losses * 10.0 ** draw(st.integers(-300, 300))
        losses = losses + draw(st.sampled_from([0.0, 0.0, 1.0, -1e3]))
    reference = None
    if draw(st.booleans()):
        reference = draw(arrays(np.float64, n, elements=st.sampled_from([0.0, 0.5, 1.0, 3.0])))
        if reference.sum() == 0:
            reference[draw(st.integers(0, n - 1))] = 1.0
    return losses, reference


def budget(draw, form: str, losses: np.ndarray) -> dict:
    if form == "radius":
        return {"radius": draw(st.sampled_from([0.0, 1e-8, 0.01, 0.1, 0.5, 1.0, 3.0, 50.0]))}
    if form == "alpha":
        return {"alpha": draw(st.sampled_from([1e-3, 0.05, 0.1, 0.3, 0.5, 0.9, 1.0]))}
    spread = float(losses.max() * 0.5 - losses.min() * 0.5) or 1.0
    return {"penalty": spread * draw(st.sampled_from([1e-3, 0.1, 1.0, 10.0, 1e3]))}


def normalised(reference, n: int) -> np.ndarray:
    if reference is None:
        return np.full(n, 1.0 / n)
    return reference / reference.sum()


def divergence(ambiguity: str, q: np.ndarray, p: np.ndarray) -> float:
    """How far q is from p in the set's own measure (the radius it uses up)."""
    on = p > 0
    if ambiguity == "kl":
        pos = q > 0
        return float(np.sum(q[pos] * np.log(q[pos] / p[pos])))
    if ambiguity == "chi2":
        return float(0.5 * np.sum((q[on] - p[on]) ** 2 / p[on]))
    if ambiguity == "tv":
        return float(0.5 * np.sum(np.abs(q - p)))
    raise AssertionError(ambiguity)


def loss_scale(losses: np.ndarray) -> float:
    """The size of the losses, for tolerances on values."""
    return float(np.max(np.abs(losses)))


def value_tolerance(losses: np.ndarray) -> float:
    """How far two computations of a value sum q l may differ: relatively 1e-12 of the losses'
    size, and absolutely a few units of the smallest subnormal a loss, since a product q_i l_i
    below 2^-1022 (and the halving in `value_of`) rounds to a multiple of 2^-1074."""
    return 1e-12 * loss_scale(losses) + 4 * len(losses) * np.finfo(np.float64).smallest_subnormal


def value_of(q: np.ndarray, losses: np.ndarray) -> float:
    # An exact sum of q l / 2, doubled: halved, no partial sum overflows for losses near 1e308.
    return 2.0 * math.fsum((q * (losses * 0.5)).tolist())


@pytest.mark.parametrize("ambiguity,form", ALL)
@given(data=st.data())
def test_weights_are_a_distribution_inside_the_set(ambiguity, form, data):
    losses, reference = data.draw(problems())
    size = budget(data.draw, form, losses)
    q = robust_weights(losses, ambiguity, reference=reference, **size)
    p = normalised(reference, len(losses))
    assert q.dtype == np.float64 and q.shape == losses.shape
    assert np.all(np.isfinite(q))
    assert np.all(q >= 0.0)
    assert abs(math.fsum(q.tolist()) - 1.0) <= 1e-12
    assert np.all(q[p == 0] == 0.0), "points with p_i = 0 never get mass"
    if form == "radius":
        rho = size["radius"]
        assert divergence(ambiguity, q, p) <= rho * (1 + 1e-9) + 1e-12
    elif form == "alpha":
        assert np.all(q <= p / size["alpha"] * (1 + 1e-12) + 1e-300)


@pytest.mark.parametrize("ambiguity,form", ALL)
@given(data=st.data())
def test_value_lies_between_the_mean_and_the_max(ambiguity, form, data):
    losses, reference = data.draw(problems())
    size = budget(data.draw, form, losses)
    solution = worst_case(losses, ambiguity, reference=reference, **size)
    p = normalised(reference, len(losses))
    tol = value_tolerance(losses)
    assert solution.value == pytest.approx(value_of(solution.weights, losses), rel=0, abs=tol)
    assert solution.value >= value_of(p, losses) - tol
    assert solution.value <= losses[p > 0].max() + tol


@pytest.mark.parametrize("ambiguity,form", ALL)
@pytest.mark.parametrize(
    "losses",
    [[2.5e-322, 2.5e-322], [1e-323, -5e-324], [2.5e-322, 9.9e-324, -4.9e-324, 0.0], [-2.5e-322, -2.5e-322]],
)
def test_the_value_matches_the_weights_at_subnormal_losses(ambiguity, form, losses):
    # Found by hypothesis: sum q l over subnormal losses, computed two ways, differs by a few
    # units of 2^-1074; 1e-12 of the losses' size alone is a tolerance of zero there.
    losses = np.array(losses)
    size = {"radius": 0.1, "alpha": 0.5, "penalty": 1e-310}[form]
    solution = worst_case(losses, ambiguity, **{form: size})
    tol = value_tolerance(losses)
    assert abs(solution.value - value_of(solution.weights, losses)) <= tol
    assert losses.mean() - tol <= solution.value <= losses.max() + tol


@pytest.mark.parametrize("ambiguity,form", CONSTRAINED)
@given(data=st.data())
def test_value_grows_with_the_radius(ambiguity, form, data):
    losses, reference = data.draw(problems())
    first, second = budget(data.draw, form, losses), budget(data.draw, form, losses)
    (key, a), (_, b) = next(iter(first.items())), next(iter(second.items()))
    # A larger set: a larger radius, or a smaller CVaR level.
    small, large = (max(a, b), min(a, b)) if key == "alpha" else (min(a, b), max(a, b))
    v_small = worst_case(losses, ambiguity, reference=reference, **{key: small}).value
    v_large = worst_case(losses, ambiguity, reference=reference, **{key: large}).value
    assert v_small <= v_large + value_tolerance(losses)


@pytest.mark.parametrize("ambiguity", ["kl", "chi2"])
@given(data=st.data())
def test_value_falls_with_the_penalty(ambiguity, data):
    losses, reference = data.draw(problems())
    a, b = sorted(budget(data.draw, "penalty", losses)["penalty"] for _ in range(2))
    v_a = worst_case(losses, ambiguity, reference=reference, penalty=a).value
    v_b = worst_case(losses, ambiguity, reference=reference, penalty=b).value
    assert v_b <= v_a + value_tolerance(losses)


@pytest.mark.parametrize("ambiguity,form", ALL)
@given(data=st.data())
def test_weights_do_not_change_when_the_losses_shift(ambiguity, form, data):
    losses, reference = data.draw(problems())
    assume(loss_scale(losses) < 1e100)
    size = budget(data.draw, form, losses)
    shift = data.draw(st.sampled_from([-7.0, 0.5, 100.0]))
    spread = float(losses.max() - losses.min())
    assume(spread == 0.0 or spread > 1e-6 * (loss_scale(losses) + abs(shift)))
    q = robust_weights(losses, ambiguity, reference=reference, **size)
    moved = robust_weights(losses + shift, ambiguity, reference=reference, **size)
    # Shifting rounds the losses: ties may appear or vanish only at the rounding level.
    assume(np.array_equal(np.argsort(losses, kind="stable"), np.argsort(losses + shift, kind="stable")))
    assume(len(np.unique(losses)) == len(np.unique(losses + shift)))
    np.testing.assert_allclose(moved, q, atol=1e-6)


@st.composite
def separated_problems(draw):
    """Losses far enough apart that V* is differentiable and a small step keeps their order."""
    n = draw(st.integers(2, 25))
    steps = draw(arrays(np.float64, n, elements=st.floats(0.05, 1.0)))
    losses = np.cumsum(steps) * draw(st.sampled_from([1.0, 10.0]))
    losses = losses[draw(st.permutations(range(n)))] + draw(st.sampled_from([0.0, -3.0]))
    reference = None
    if draw(st.booleans()):
        reference = draw(arrays(np.float64, n, elements=st.floats(0.1, 1.0)))
    direction = draw(arrays(np.float64, n, elements=st.floats(-1.0, 1.0)))
    return losses, reference, direction


# Sizes at which V* is smooth in the losses: away from the radius where the arg-max takes all
# and, for CVaR and TV, from levels where a cut lands exactly on a loss's share boundary.
DANSKIN = [
    ("kl", {"radius": 0.05}),
    ("kl", {"radius": 0.4}),
    ("chi2", {"radius": 0.05}),
    ("chi2", {"radius": 0.3}),
    ("cvar", {"alpha": 0.237}),
    ("tv", {"radius": 0.137}),
    ("kl", {"penalty": 0.7}),
    ("chi2", {"penalty": 2.3}),
]


@pytest.mark.parametrize("ambiguity,size", DANSKIN)
@given(problem=separated_problems())
def test_gradient_of_the_value_is_the_weights(ambiguity, size, problem):
    losses, reference, direction = problem
    q = robust_weights(losses, ambiguity, reference=reference, **size)
    h = 1e-6

    def value(l: np.ndarray) -> float:
        solution = worst_case(l, ambiguity, reference=reference, **size)
        if "penalty" in size:
            # The penalised objective, sum q l - penalty * divergence: Danskin holds for it too.
            p = normalised(reference, len(l))
            return solution.value - size["penalty"] * divergence(ambiguity, solution.weights, p)
        return solution.value

    slope = (value(losses + h * direction) - value(losses - h * direction)) / (2 * h)
    assert slope == pytest.approx(float(q @ direction), abs=2e-6 * np.abs(losses).max())


@pytest.mark.parametrize("ambiguity,form", ALL)
@given(data=st.data())
def test_float32_gives_a_float32_distribution(ambiguity, form, data):
    losses, reference = data.draw(problems())
    assume(loss_scale(losses) < 1e30 and (loss_scale(losses) > 1e-30 or not losses.any()))
    losses32 = losses.astype(np.float32)
    size = budget(data.draw, form, losses32.astype(np.float64))
    q32 = robust_weights(losses32, ambiguity, reference=reference, **size)
    assert q32.dtype == np.float32 and q32.shape == losses.shape
    assert np.all(q32 >= 0)
    assert abs(float(np.sum(q32, dtype=np.float64)) - 1.0) <= 1e-5
    q64 = robust_weights(losses32.astype(np.float64), ambiguity, reference=reference, **size)
    np.testing.assert_allclose(q32, q64, rtol=1e-5, atol=1e-6)
