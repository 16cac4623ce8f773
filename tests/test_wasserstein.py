"""The Wasserstein set against the exact linear program over transport plans (scipy HiGHS):
the worst-case value, the plan's marginals and budget, and the edge cases of docs/method.md#wasserstein
(radius 0, a radius beyond the diameter, ties, duplicate points, references with zeros, p = 1,
2 and between, float32), the penalised form, the numpy baseline, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dro_rebel import robust_weights, worst_case
from dro_rebel.baseline_wasserstein import (
    wasserstein_costs,
    wasserstein_linprog,
    wasserstein_weights,
)


@st.composite
def problems(draw, max_n: int = 9):
    """Losses, features (rounded ones give duplicate points), a reference (maybe with zeros),
    the type p and a radius from 0 to beyond the diameter."""
    n = draw(st.integers(1, max_n))
    dim = draw(st.integers(1, 3))
    if draw(st.booleans()):
        losses = draw(arrays(np.float64, n, elements=st.integers(-2, 2).map(float)))
    else:
        losses = draw(arrays(np.float64, n, elements=st.floats(-1.0, 1.0)))
    # On a grid of 1/8: HiGHS scales its rows, so a cost of 2^-30 (distance 2^-10, p = 3)
    # would pass for a free move within its feasibility tolerance.
    features = draw(arrays(np.float64, (n, dim), elements=st.integers(-16, 16))) / 8.0
    if draw(st.booleans()):
        features = np.round(features)
    reference = None
    if draw(st.booleans()):
        reference = draw(arrays(np.float64, n, elements=st.sampled_from([0.0, 0.5, 1.0, 3.0])))
        if reference.sum() == 0:
            reference[draw(st.integers(0, n - 1))] = 1.0
    p = draw(st.sampled_from([1.0, 2.0, 1.5, 3.0]))
    diameter = float(wasserstein_costs(n, p=1.0, features=features).max())
    radius = diameter * draw(st.sampled_from([0.0, 1e-3, 0.05, 0.2, 0.5, 1.0, 2.0])) * draw(st.floats(0.5, 1.0))
    return losses, features, reference, p, radius


def normalised(reference, n):
    return np.full(n, 1.0 / n) if reference is None else reference / reference.sum()


def check_plan(solution, losses, reference, costs, budget, *, marginal_tol=1e-9):
    """Row sums p, column sums q, at most n + 1 entries, on the support, within the budget."""
    n = losses.shape[0]
    p = normalised(reference, n)
    source, target, mass = solution.plan
    assert source.dtype == np.int64 and target.dtype == np.int64
    assert mass.shape[0] <= n + 1
    assert np.all(mass > 0)
    assert np.all(p[source] > 0) and np.all(p[target] > 0)
    np.testing.assert_allclose(np.bincount(source, mass, n), p, rtol=0, atol=marginal_tol)
    np.testing.assert_allclose(np.bincount(target, mass, n), solution.weights, rtol=0, atol=marginal_tol)
    spent = float(mass @ costs[source, target])
    assert spent <= budget * (1 + 1e-9) + 1e-12
    return spent


@given(problems(), st.sampled_from(["features", "cost"]))
def test_value_and_plan_match_the_linear_program(problem, geometry):
    losses, features, reference, p, radius = problem
    n = losses.shape[0]
    distances = wasserstein_costs(n, p=1.0, features=features)
    given_geometry = {"features": features} if geometry == "features" else {"cost": distances}
    solution = worst_case(losses, "wasserstein", radius=radius, p=p, reference=reference, **given_geometry)
    _, exact, _ = wasserstein_linprog(losses, radius=radius, p=p, features=features, reference=reference)
    assert abs(solution.value - exact) <= 1e-7 * max(1.0, abs(exact))
    assert solution.value == pytest.approx(float(solution.weights @ losses), abs=1e-12)
    costs = distances**p
    spent = check_plan(solution, losses, reference, costs, radius**p)
    if solution.dual > 0 and np.isfinite(solution.dual):
        assert spent == pytest.approx(radius**p, rel=1e-9), "the budget binds where lam > 0"


@given(problems())
@settings(max_examples=30)
def test_the_numpy_baseline_matches_the_linear_program(problem):
    losses, features, reference, p, radius = problem
    q = wasserstein_weights(losses, radius=radius, p=p, features=features, reference=reference)
    _, exact, _ = wasserstein_linprog(losses, radius=radius, p=p, features=features, reference=reference)
    assert abs(q @ losses - exact) <= 1e-7 * max(1.0, abs(exact))
    assert q.sum() == pytest.approx(1.0, abs=1e-12)


@given(problems(), st.sampled_from([1e-3, 0.1, 1.0, 10.0]))
def test_the_penalised_form_moves_each_point_to_its_best_target(problem, lam):
    losses, features, reference, p, _ = problem
    solution = worst_case(losses, "wasserstein", penalty=lam, p=p, features=features, reference=reference)
    assert solution.dual == lam and solution.radius is None
    n = losses.shape[0]
    costs = wasserstein_costs(n, p=p, features=features)
    spent = check_plan(solution, losses, reference, costs, np.inf)
    # The penalised objective sum q l - lam * cost is sum_i p_i max_j (l_j - lam c_ij). (The
    # weights themselves can jump at a near-tie: a gain of 5e-324 is one the core, working to
    # 2^-52 of the loss range, sees as a tie and does not take.)
    p_ref = normalised(reference, n)
    support = p_ref > 0
    best = np.where(support[None, :], losses[None, :] - lam * costs, -np.inf).max(axis=1)
    spread = float(np.abs(losses).max())
    assert solution.value - lam * spent == pytest.approx(
        float(p_ref[support] @ best[support]), abs=1e-12 * spread + 1e-15
    )


@given(problems(), st.sampled_from(["features", "cost"]))
def test_the_worst_case_grows_with_the_radius_between_the_mean_and_the_max(problem, geometry):
    losses, features, reference, p, radius = problem
    n = losses.shape[0]
    kwargs = {"features": features} if geometry == "features" else {"cost": wasserstein_costs(n, features=features)}
    values = [
        worst_case(losses, "wasserstein", radius=r, p=p, reference=reference, **kwargs).value
        for r in (0.0, 0.5 * radius, radius, 2.0 * radius)
    ]
    support = normalised(reference, n) > 0
    tol = 1e-12 * (1.0 + np.abs(losses).max())
    assert all(a <= b + tol for a, b in zip(values, values[1:]))
    assert values[-1] <= losses[support].max() + tol
    assert values[0] >= float(normalised(reference, n) @ losses) - tol


def test_radius_zero_gives_the_reference():
    rng = np.random.default_rng(0)
    losses, features = rng.standard_normal(20), rng.standard_normal((20, 4))
    for p in (1.0, 2.0):
        solution = worst_case(losses, "wasserstein", radius=0.0, p=p, features=features)
        np.testing.assert_array_equal(solution.weights, np.full(20, 1 / 20))
        assert solution.value == pytest.approx(losses.mean(), abs=1e-15)
        assert solution.dual == np.inf


def test_duplicate_points_exchange_mass_for_free():
    # Samples 0 and 2 share their features: even radius 0 moves 0's mass to 2 (larger loss),
    # as the linear program does.
    losses = np.array([0.1, 0.5, 0.9, 0.3])
    features = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 1.0], [3.0, 0.0]])
    for radius in (0.0, 0.5):
        solution = worst_case(losses, "wasserstein", radius=radius, features=features)
        _, exact, _ = wasserstein_linprog(losses, radius=radius, features=features)
        assert solution.value == pytest.approx(exact, abs=1e-12)
        assert solution.weights[0] == 0.0 and solution.weights[2] >= 0.5


def test_a_radius_beyond_the_diameter_puts_all_mass_on_the_max():
    rng = np.random.default_rng(1)
    losses, features = rng.standard_normal(30), rng.standard_normal((30, 3))
    diameter = wasserstein_costs(30, features=features).max()
    for p in (1.0, 2.0):
        solution = worst_case(losses, "wasserstein", radius=1.01 * diameter, p=p, features=features)
        expected = np.zeros(30)
        expected[losses.argmax()] = 1.0
        np.testing.assert_allclose(solution.weights, expected, rtol=0, atol=1e-15)
        assert solution.value == pytest.approx(losses.max(), abs=1e-15) and solution.dual == 0.0


def test_ties_flat_losses_stay_and_tied_maxima_share_the_max():
    features = np.arange(6.0).reshape(6, 1)
    flat = worst_case(np.full(6, 2.5), "wasserstein", radius=3.0, features=features)
    np.testing.assert_array_equal(flat.weights, np.full(6, 1 / 6))
    # Two tied maxima at both ends: each point goes to its nearest one.
    losses = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    solution = worst_case(losses, "wasserstein", radius=10.0, features=features)
    assert solution.value == 1.0
    np.testing.assert_allclose(solution.weights, [0.5, 0, 0, 0, 0, 0.5])


def test_float32_losses_and_features():
    rng = np.random.default_rng(2)
    losses = rng.standard_normal(50).astype(np.float32)
    features = rng.standard_normal((50, 8)).astype(np.float32)
    single = worst_case(losses, "wasserstein", radius=0.5, p=2, features=features)
    double = worst_case(losses.astype(np.float64), "wasserstein", radius=0.5, p=2, features=features.astype(np.float64))
    assert single.weights.dtype == np.float32
    assert single.value == double.value
    np.testing.assert_array_equal(single.weights, double.weights.astype(np.float32))
    _, exact, _ = wasserstein_linprog(losses, radius=0.5, p=2, features=features)
    assert single.value == pytest.approx(exact, rel=1e-7)


def test_rows_solve_independently_with_one_plan_each():
    rng = np.random.default_rng(3)
    losses, features = rng.standard_normal((3, 12)), rng.standard_normal((12, 2))
    batch = worst_case(losses, "wasserstein", radius=0.4, features=features)
    assert isinstance(batch.plan, list) and len(batch.plan) == 3
    for row in range(3):
        single = worst_case(losses[row], "wasserstein", radius=0.4, features=features)
        np.testing.assert_array_equal(batch.weights[row], single.weights)
        assert batch.value[row] == single.value
    weights = robust_weights(losses[0], "wasserstein", radius=0.4, features=features)
    np.testing.assert_array_equal(weights, batch.weights[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "features= (n x d) or cost="),
        ({"features": np.zeros((3, 0))}, "d = 0"),
        ({"features": np.array([[0.0], [np.nan], [1.0]])}, "finite"),
        ({"cost": np.array([[0.0, 1, 1], [1, 0, -1], [1, 1, 0]])}, "non-negative"),
        ({"cost": np.array([[0.0, 1, 1], [1, 0, np.inf], [1, 1, 0]])}, "finite"),
        ({"cost": np.array([[0.0, 1, 1], [1, 0.5, 1], [1, 1, 0]])}, "zero diagonal"),
        ({"cost": np.zeros((2, 2))}, "shape (3, 3)"),
        ({"features": np.zeros((2, 1))}, "n = 3"),
        ({"features": np.zeros((3, 1)), "cost": np.zeros((3, 3))}, "not both"),
        ({"features": np.zeros((3, 1)), "p": 0.5}, "p must be"),
    ],
)
def test_bad_geometry_is_a_value_error_that_says_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        worst_case(np.array([1.0, 2.0, 3.0]), "wasserstein", radius=1.0, **kwargs)


@pytest.mark.parametrize("geometry", ["features", "cost"])
def test_groups_solve_the_problem_between_groups(geometry):
    # Over groups the set moves mass between group centroids (features=) or along the
    # p-weighted mean costs between groups (cost=); each sample then gets its group's weight
    # in proportion to p, as for the other sets.
    rng = np.random.default_rng(3)
    n = 12
    losses, features, p = rng.normal(size=n), rng.normal(size=(n, 3)), rng.uniform(0.1, 1.0, n)
    groups = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 5, 5, 5])
    labels = np.unique(groups)
    members = [groups == g for g in labels]
    mass = np.array([p[m].sum() for m in members])
    group_losses = np.array([(p * losses)[m].sum() / p[m].sum() for m in members])
    distances = np.linalg.norm(features[:, None, :] - features[None, :, :], axis=-1)
    if geometry == "features":
        centroids = np.array([(p[m, None] * features[m]).sum(axis=0) / p[m].sum() for m in members])
        group_geometry, sample_geometry = {"features": centroids}, {"features": features}
    else:
        between = np.array(
            [
                [
                    0.0
                    if a == b
                    else np.outer(p[ma], p[mb]).ravel()
                    @ distances[np.ix_(ma, mb)].ravel()
                    / (p[ma].sum() * p[mb].sum())
                    for b, mb in enumerate(members)
                ]
                for a, ma in enumerate(members)
            ]
        )
        group_geometry, sample_geometry = {"cost": between}, {"cost": distances}
    group_q = worst_case(group_losses, "wasserstein", radius=0.7, reference=mass, **group_geometry).weights
    expected = np.zeros(n)
    for g, m in enumerate(members):
        expected[m] = group_q[g] * p[m] / p[m].sum()
    solution = worst_case(losses, "wasserstein", radius=0.7, reference=p, groups=groups, **sample_geometry)
    np.testing.assert_allclose(solution.weights, expected, atol=1e-12)
    assert solution.plan is None
    assert solution.value == pytest.approx(float(expected @ losses), rel=1e-12)
