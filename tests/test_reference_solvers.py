"""V* against exact convex-programming references (scipy), to 1e-8 relative in float64, and
the weights against the numpy baseline (dro_rebel.baseline), the second oracle.

The references solve each set's own convex program, independently of the core's method:
the 1-D duals of docs/method.md with scipy's bounded Brent search at tight tolerance (kl,
chi2 and the chi2 penalised form), the CVaR and TV linear programs with HiGHS, the CVaR dual at
every breakpoint, and the closed form of the KL penalised form. All work on the centred,
scaled losses u = (l - max) / (max - min), so one tolerance fits every scale."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import linprog, minimize_scalar
from scipy.special import logsumexp

from dro_rebel import baseline, robust_weights, worst_case

REL = 1e-8
# HiGHS's default tolerances (1e-7) let it stop on a vertex up to 1e-7 worse.
TIGHT = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}


@st.composite
def problems(draw, max_n: int = 30):
    n = draw(st.integers(1, max_n))
    if draw(st.booleans()):
        # Magnitudes below 1e-150 become 0: see the chi2 xfail in test_edge_cases.py.
        unit = st.floats(-1.0, 1.0).map(lambda x: 0.0 if abs(x) < 1e-150 else x)
        losses = draw(arrays(np.float64, n, elements=unit))
    else:
        losses = draw(arrays(np.float64, n, elements=st.integers(0, 4).map(float)))
    losses = losses * 10.0 ** draw(st.integers(-200, 200)) + draw(st.sampled_from([0.0, 5.0]))
    reference = None
    if draw(st.booleans()):
        reference = draw(arrays(np.float64, n, elements=st.sampled_from([0.0, 0.2, 1.0, 2.0])))
        if reference.sum() == 0:
            reference[0] = 1.0
    return losses, reference


def scaled(losses, reference):
    """(u, p, top, spread) on the support of p, u = (l - top) / spread in [-1, 0]."""
    n = len(losses)
    p = np.full(n, 1.0 / n) if reference is None else reference / reference.sum()
    on = p > 0
    top, bottom = losses[on].max(), losses[on].min()
    spread = top * 0.5 - bottom * 0.5
    u = (losses[on] * 0.5 - top * 0.5) / spread if spread > 0 else np.zeros(on.sum())
    return u, p[on], top, 2.0 * spread


def in_u_units(value, losses, top, spread):
    """A value in loss units as (value in u units, its rounding there): sum q l carries an
    error of about n eps max|l|, which is large in u units when the losses sit far from 0
    relative to their spread (5 and 5 + 1e-8, say)."""
    if spread == 0:
        return 0.0, 0.0
    rounding = (len(losses) + 4) * np.finfo(float).eps * np.max(np.abs(losses)) / spread
    return (value * 0.5 - top * 0.5) / (spread * 0.5), rounding


def reference_kl(u, p, rho):
    if rho == 0 or np.ptp(u) == 0:
        return float(p @ u)

    def dual(s):
        tau = np.exp(s)
        return tau * rho + tau * logsumexp(u / tau, b=p)

    best = minimize_scalar(dual, bounds=(-60.0, 30.0), method="bounded", options={"xatol": 1e-12})
    return min(float(best.fun), 0.0)


def reference_chi2(u, p, rho):
    if rho == 0 or np.ptp(u) == 0:
        return float(p @ u)
    c = 1.0 + 2.0 * rho

    def dual(eta):
        return eta + np.sqrt(c) * np.sqrt(p @ np.maximum(u - eta, 0.0) ** 2)

    low = -1.0 - np.sqrt(1.0 / (c - 1.0)) - 1.0
    best = minimize_scalar(dual, bounds=(low, 0.0), method="bounded", options={"xatol": 1e-14})
    return min(float(best.fun), 0.0)


def reference_cvar_dual(u, p, alpha):
    """min_eta eta + (1/alpha) E_p (u - eta)_+: piecewise linear, so its minimum is at a u_j."""
    return min(float(eta + p @ np.maximum(u - eta, 0.0) / alpha) for eta in u)


def reference_cvar_lp(u, p, alpha):
    result = linprog(
        -u, A_eq=np.ones((1, len(u))), b_eq=[1.0], bounds=[(0, pi / alpha) for pi in p], method="highs", options=TIGHT
    )
    assert result.status == 0
    return -float(result.fun)


def reference_tv_lp(u, p, rho):
    """max u.q, q = p + a - b, a, b >= 0, b <= p, sum a = sum b <= rho."""
    n = len(u)
    objective = -np.concatenate([u, -u])
    a_eq = np.concatenate([np.ones(n), -np.ones(n)])[None, :]
    a_ub = np.concatenate([np.zeros(n), np.ones(n)])[None, :]
    bounds = [(0, None)] * n + [(0, pi) for pi in p]
    result = linprog(
        objective, A_ub=a_ub, b_ub=[rho], A_eq=a_eq, b_eq=[0.0], bounds=bounds, method="highs", options=TIGHT
    )
    assert result.status == 0
    return float(p @ u - result.fun)


def reference_kl_penalised(u, p, tau_u):
    """sup_q E_q u - tau KL(q || p) = tau log E_p exp(u / tau)."""
    return float(tau_u * logsumexp(u / tau_u, b=p))


def reference_chi2_penalised(u, p, lam_u):
    """sup_q E_q u - lam chi2(q || p), by its dual in the multiplier mu of sum q = 1:
    min_mu mu + sum_i p_i h(u_i - mu), h(a) = a + a^2 / (2 lam) for a >= -lam, else -lam / 2."""

    def dual(mu):
        a = u - mu
        h = np.where(a >= -lam_u, a + a * a / (2 * lam_u), -lam_u / 2)
        return mu + p @ h

    best = minimize_scalar(dual, bounds=(-2.0 - lam_u, 1.0 + lam_u), method="bounded", options={"xatol": 1e-14})
    return float(best.fun)


def check_value(ours_u, rounding, exact_u):
    # The values are in units of the spread of the losses, where V* lies in [-1, 0].
    assert abs(ours_u - exact_u) <= REL * max(1.0, abs(exact_u)) + rounding, (ours_u, exact_u)


@given(problem=problems(), rho=st.sampled_from([0.0, 1e-6, 0.01, 0.1, 0.7, 2.0, 30.0]))
def test_kl_radius_matches_its_dual(problem, rho):
    losses, reference = problem
    u, p, top, spread = scaled(losses, reference)
    solution = worst_case(losses, "kl", radius=rho, reference=reference)
    check_value(*in_u_units(solution.value, losses, top, spread), reference_kl(u, p, rho))


@given(problem=problems(), rho=st.sampled_from([0.0, 1e-6, 0.01, 0.1, 0.7, 2.0, 30.0]))
def test_chi2_radius_matches_its_dual(problem, rho):
    losses, reference = problem
    u, p, top, spread = scaled(losses, reference)
    solution = worst_case(losses, "chi2", radius=rho, reference=reference)
    check_value(*in_u_units(solution.value, losses, top, spread), reference_chi2(u, p, rho))


@given(problem=problems(), alpha=st.sampled_from([1e-3, 0.05, 0.2, 0.5, 0.77, 1.0]))
def test_cvar_matches_its_linear_program_and_dual(problem, alpha):
    losses, reference = problem
    u, p, top, spread = scaled(losses, reference)
    solution = worst_case(losses, "cvar", alpha=alpha, reference=reference)
    ours = in_u_units(solution.value, losses, top, spread)
    check_value(*ours, reference_cvar_dual(u, p, alpha))
    check_value(*ours, reference_cvar_lp(u, p, alpha))


@given(problem=problems(), rho=st.sampled_from([0.0, 1e-6, 0.05, 0.2, 0.5, 0.9, 1.0]))
def test_tv_matches_its_linear_program(problem, rho):
    losses, reference = problem
    u, p, top, spread = scaled(losses, reference)
    solution = worst_case(losses, "tv", radius=rho, reference=reference)
    check_value(*in_u_units(solution.value, losses, top, spread), reference_tv_lp(u, p, rho))


@given(problem=problems(), relative=st.sampled_from([1e-3, 0.05, 0.3, 1.0, 10.0, 1e3]))
def test_kl_penalised_matches_its_closed_form(problem, relative):
    check_kl_penalised(*problem, relative)


def check_kl_penalised(losses, reference, relative):
    u, p, top, spread = scaled(losses, reference)
    # A temperature of `relative` in the units of u.
    q = robust_weights(losses, "kl", penalty=relative * (spread or 1.0), reference=reference)
    q_on = q if reference is None else q[reference > 0]
    pos = q_on > 0
    objective = q_on @ u - relative * np.sum(q_on[pos] * np.log(q_on[pos] / p[pos]))
    check_value(objective, 0.0, reference_kl_penalised(u, p, relative))


@given(problem=problems(), relative=st.sampled_from([1e-3, 0.05, 0.3, 1.0, 10.0, 1e3]))
def test_chi2_penalised_matches_its_dual(problem, relative):
    check_chi2_penalised(*problem, relative)


def check_chi2_penalised(losses, reference, relative):
    u, p, top, spread = scaled(losses, reference)
    q = robust_weights(losses, "chi2", penalty=relative * (spread or 1.0), reference=reference)
    q_on = q if reference is None else q[reference > 0]
    objective = q_on @ u - relative * 0.5 * np.sum((q_on - p) ** 2 / p)
    check_value(objective, 0.0, reference_chi2_penalised(u, p, relative))


SIZES = [
    ("kl", {"radius": 0.1}),
    ("kl", {"radius": 2.0}),
    ("kl", {"penalty": 0.3}),
    ("chi2", {"radius": 0.1}),
    ("chi2", {"radius": 3.0}),
    ("chi2", {"penalty": 0.3}),
    ("cvar", {"alpha": 0.15}),
    ("cvar", {"alpha": 0.6}),
    ("tv", {"radius": 0.15}),
    ("tv", {"radius": 0.6}),
]


@st.composite
def separated_problems(draw, max_n: int = 30):
    """Losses on a grid of 1/1000 of their scale: the weights are well conditioned (two losses
    1e-17 of the spread apart may split their weight any way that leaves V* the same to 1e-17)."""
    n = draw(st.integers(1, max_n))
    grid = draw(arrays(np.float64, n, elements=st.integers(-1000, 1000).map(float)))
    losses = grid / 1000.0 * 10.0 ** draw(st.integers(-200, 200)) + draw(st.sampled_from([0.0, 5.0]))
    reference = None
    if draw(st.booleans()):
        reference = draw(arrays(np.float64, n, elements=st.sampled_from([0.0, 0.2, 1.0, 2.0])))
        if reference.sum() == 0:
            reference[0] = 1.0
    return losses, reference


@pytest.mark.parametrize("ambiguity,size", SIZES)
@given(problem=separated_problems())
def test_weights_match_the_numpy_baseline(ambiguity, size, problem):
    losses, reference = problem
    if "penalty" in size:
        # A penalty in the losses' own units.
        spread = float(losses.max() * 0.5 - losses.min() * 0.5) * 2.0 or 1.0
        size = {"penalty": size["penalty"] * spread}
    ours = robust_weights(losses, ambiguity, reference=reference, **size)
    theirs = baseline.robust_weights(losses, ambiguity, reference=reference, **size)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-7)


@pytest.mark.parametrize("ambiguity,size", SIZES[:-1])
def test_weights_match_the_baseline_on_rows_and_groups(ambiguity, size):
    rng = np.random.default_rng(7)
    losses = rng.gamma(2.0, size=(5, 40))
    reference = rng.random((5, 40))
    groups = rng.integers(0, 6, 40)
    ours = robust_weights(losses, ambiguity, reference=reference, groups=groups, **size)
    theirs = baseline.robust_weights(losses, ambiguity, reference=reference, groups=groups, **size)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)


@st.composite
def large_problems(draw):
    """Batches where the sampled start (4,096 losses on, KL) and the two-thread passes (65,536
    on) apply: several shapes of loss distribution, heavy tails and ties among them, any scale,
    references with zeros."""
    n = draw(st.sampled_from([4096, 5003, 20000, 70001]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["uniform", "squared normal", "lognormal", "ties", "one outlier"]))
    if kind == "uniform":
        losses = rng.random(n)
    elif kind == "squared normal":
        losses = rng.standard_normal(n) ** 2
    elif kind == "lognormal":
        losses = rng.lognormal(0.0, 2.0, n)
    elif kind == "ties":
        losses = rng.integers(0, 5, n).astype(float)
    else:
        losses = rng.random(n)
        losses[rng.integers(n)] = 50.0
    losses = losses * 10.0 ** draw(st.integers(-100, 100)) + draw(st.sampled_from([0.0, -3.0]))
    reference = None
    if draw(st.booleans()):
        reference = rng.choice([0.0, 0.5, 1.0, 3.0], n)
        reference[0] = 1.0
    return losses, reference


LARGE = settings(max_examples=max(8, settings.default.max_examples // 6))


@LARGE
@given(problem=large_problems(), rho=st.sampled_from([1e-4, 0.01, 0.1, 0.7, 3.0]))
def test_large_batches_kl_and_chi2_radius_match_their_duals(problem, rho):
    losses, reference = problem
    u, p, top, spread = scaled(losses, reference)
    for ambiguity, exact in (("kl", reference_kl), ("chi2", reference_chi2)):
        solution = worst_case(losses, ambiguity, radius=rho, reference=reference)
        check_value(*in_u_units(solution.value, losses, top, spread), exact(u, p, rho))
        assert abs(solution.weights.sum() - 1.0) <= 1e-12


@LARGE
@given(problem=large_problems(), relative=st.sampled_from([1e-3, 0.1, 1.0, 10.0]))
def test_large_batches_penalised_forms_match_their_references(problem, relative):
    check_kl_penalised(*problem, relative)
    check_chi2_penalised(*problem, relative)


@LARGE
@given(problem=large_problems(), level=st.sampled_from([1e-3, 0.05, 0.3, 0.9]))
def test_large_batches_cvar_and_tv_match_the_baseline(problem, level):
    # The histogram path of the selection, on both threads above 65,536 losses; the linear
    # programs are too slow at this size, the numpy baseline (a full sort) is not.
    losses, reference = problem
    u, p, top, spread = scaled(losses, reference)
    for ambiguity, size in (("cvar", {"alpha": level}), ("tv", {"radius": level})):
        ours = worst_case(losses, ambiguity, reference=reference, **size)
        theirs = float(baseline.robust_weights(losses, ambiguity, reference=reference, **size) @ losses)
        check_value(*in_u_units(ours.value, losses, top, spread), in_u_units(theirs, losses, top, spread)[0])


@LARGE
@given(problem=large_problems(), rho=st.sampled_from([1e-3, 0.1, 1.0]))
def test_large_batches_in_float32_match_float64(problem, rho):
    # The sampled start and the passes in float32 (sums in float64): the weights to float32's
    # precision on the scale of the largest weight.
    losses, reference = problem
    # The same values in both: rescaled into float32's range, then widened back.
    narrow = (losses / np.max(np.abs(losses))).astype(np.float32)
    for ambiguity in ("kl", "chi2"):
        q64 = robust_weights(narrow.astype(np.float64), ambiguity, radius=rho, reference=reference)
        q32 = robust_weights(narrow, ambiguity, radius=rho, reference=reference)
        assert q32.dtype == np.float32
        np.testing.assert_allclose(q32, q64, rtol=0, atol=1e-4 * q64.max())
