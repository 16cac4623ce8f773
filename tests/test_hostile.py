"""Hostile input through the Python API: the same invariants as the Rust fuzz targets
(fuzz/src/lib.rs), on arbitrary floats, sizes, radii and references, and on the extremes
docs/method.md#edge-cases names: losses from 1e-300 to 1e300 of mixed signs, float32 near its limits
(3.4e38, 1e-38, subnormals).

The verdicts: a call either returns or raises ValueError (never a PanicException, TypeError or
anything else), it returns exactly when the input is valid, and what it returns is a
distribution on the support of p inside the set, with sum_p l <= V* <= max l.

Tolerances, honest at any magnitude (see fuzz/src/lib.rs): values are compared in units of
max |l|, where a sum of n terms in f64 carries at most about n * 2^-52 of rounding; float32
output rounds each weight up to twice more (2^-23 in all, as fuzz/src/lib.rs allows): solvers
that normalise store the unnormalised weight in the output, then the normalised one over it.
Weights below 1.2e-30 in float32 (2.3e-300 in float64) keep no relative precision (the solvers
store q times a total >= 1e-8 in the output type), so those are bounded only in absolute terms.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dro_rebel import robust_weights, worst_case

F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal, 1.2e-38
F32_SUBNORMAL = float(np.float32(1.4e-45))
F64_TINY = np.finfo(np.float64).tiny

# Values that have broken numeric code somewhere.
SPECIAL = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    1e-300,
    -1e300,
    1e300,
    5e-324,
    -5e-324,
    F64_TINY,
    np.finfo(np.float64).max,
    -np.finfo(np.float64).max,
    F32_MAX,
    -F32_MAX,
    3e38,
    -3e38,
    F32_TINY,
    1e-38,
    F32_SUBNORMAL,
    -F32_SUBNORMAL,
]

SETS = [
    ("kl", "radius"),
    ("kl", "penalty"),
    ("chi2", "radius"),
    ("chi2", "penalty"),
    ("cvar", "alpha"),
    ("tv", "radius"),
]


# ---------------------------------------------------------------- strategies


def extreme_floats() -> st.SearchStrategy[float]:
    """sign * mantissa * 10^e, e in [-300, 300]: every magnitude, both signs, some ties."""
    mantissa = st.sampled_from([1.0, 1.0, 2.0, 1.5, 9.99]) | st.floats(1.0, 10.0)
    return st.builds(
        lambda s, m, e: s * m * 10.0**e,
        st.sampled_from([1.0, -1.0]),
        mantissa,
        st.integers(-300, 300),
    ) | st.sampled_from([0.0, 1e-300, -1e-300, 1e300, -1e300])


def float32_edges() -> st.SearchStrategy[float]:
    edges = [
        F32_MAX,
        -F32_MAX,
        3e38,
        -3e38,
        1e38,
        F32_TINY,
        -F32_TINY,
        1e-38,
        F32_SUBNORMAL,
        -F32_SUBNORMAL,
        1e-45,
        0.0,
        1.0,
        -1.0,
    ]
    return st.sampled_from(edges) | st.floats(width=32, allow_nan=False, allow_infinity=False)


def budgets(form: str) -> st.SearchStrategy[float]:
    """Radii, penalties and alphas from 0 to inf, the invalid ones included."""
    if form == "alpha":
        return st.sampled_from([1.0, 0.5, 0.1, 1e-3, 1e-300, 5e-324]) | st.floats(0.0, 1.0) | st.floats()
    return (
        st.sampled_from([0.0, 1e-300, 5e-324, 1e-12, 0.01, 0.5, 1.0, 10.0, 1e300, math.inf])
        | st.floats(0.0, 10.0)
        | st.floats()
    )


def references(n: int) -> st.SearchStrategy:
    """None, or weights with zeros, of a wide dynamic range (invalid ones included)."""
    element = st.sampled_from([0.0, 0.0, 1.0, 3.0, 1e-300, 1e300, 5e-324, F32_TINY]) | st.floats(0.0, 1e3)
    return st.none() | arrays(np.float64, n, elements=element)


# ---------------------------------------------------------------- the invariants


def is_valid(losses, reference, form, size) -> bool:
    """Whether the input defines a problem, decided without the core (as fuzz/src/lib.rs)."""
    if losses.size == 0 or not np.isfinite(losses).all():
        return False
    if reference is not None:
        if not (np.isfinite(reference).all() and (reference >= 0).all()):
            return False
        with np.errstate(over="ignore"):
            total = float(np.sum(reference))
        if not (math.isfinite(total) and total > 0 and math.isfinite(1.0 / total)):
            return False
    if form == "radius":
        return size >= 0
    if form == "penalty":
        return size > 0
    return 0 < size <= 1


def normalised_reference(losses, reference) -> np.ndarray:
    """p as the core normalises it (w * (1 / sum w)), so that zeros agree exactly."""
    n = losses.shape[-1]
    if reference is None:
        return np.full(n, 1.0 / n)
    return reference * (1.0 / float(np.sum(reference)))


def check_solution(losses, reference, ambiguity, form, size, q, value, groups=None, dual=None):
    """Every invariant of docs/method.md#invariants that holds for any input: see the module docs."""
    # Off the support, and in the caps p / alpha, overflow to inf is expected and harmless.
    with np.errstate(over="ignore"):
        _check_solution(losses, reference, ambiguity, form, size, q, value, groups, dual)


def _check_solution(losses, reference, ambiguity, form, size, q, value, groups, dual):
    float32 = losses.dtype == np.float32
    assert q.dtype == (np.float32 if float32 else np.float64)
    l = losses.astype(np.float64)
    q = q.astype(np.float64)
    p = normalised_reference(l, reference)
    n = l.size
    output = 2.0**-23 if float32 else 0.0  # two roundings to float32 (module docstring)
    # The smallest weight whose relative precision the solvers keep: they store q * total with
    # total >= 1e-8 in the output type (below that they write q directly).
    normal = 1.2e-30 if float32 else 2.3e-300
    rounding = (16 + 4 * n) * 2.0**-52
    context = f"\nlosses={l!r}\nreference={reference!r}\n{ambiguity} {form}={size!r}\nq={q!r}\nV={value!r}"

    assert np.isfinite(q).all() and (q >= 0).all(), "weights not finite and >= 0" + context
    assert (q[p == 0] == 0).all(), "mass where p is zero" + context
    assert abs(math.fsum(q) - 1.0) <= (1e-6 if float32 else 1e-12), f"sum {math.fsum(q)}" + context

    support = p > 0
    unit = float(np.max(np.abs(l[support]))) or 1.0
    scaled = l / unit
    mean = math.fsum(p[support] * scaled[support])
    top = float(np.max(scaled[support]))
    recomputed = math.fsum(q[support] * scaled[support])
    v = value / unit
    slack = rounding + output + n * 5e-324 / unit
    assert math.isfinite(value), "V not finite" + context
    assert v >= mean - slack, f"V below the mean {mean * unit}" + context
    assert v <= top + slack, f"V above the max {top * unit}" + context
    assert abs(v - recomputed) <= slack, f"V != sum q l = {recomputed * unit}" + context

    qn = q / math.fsum(q)
    if form == "radius" and ambiguity == "kl":
        on = qn > 0
        logs = np.log(qn[on]) - np.log(p[on])
        kl = math.fsum(qn[on] * logs)
        allowed = size * (1 + 1e-6) + 1e-12 + (rounding + 2 * output) * (1 + float(np.max(np.abs(logs))))
        assert kl <= allowed, f"KL {kl} > radius" + context
    if form == "radius" and ambiguity == "chi2":
        d = qn[support] - p[support]
        chi2 = 0.5 * math.fsum(d * (d / p[support]))
        ratio = float(np.max(qn[support] / p[support]))
        error = rounding + 2 * output + threshold_rounding(*solved_level(l, p, groups), dual)
        allowed = size * (1 + 1e-6) + 1e-12 + error * (1 + ratio)
        assert chi2 <= allowed, f"chi2 {chi2} > radius" + context
    if form == "radius" and ambiguity == "tv":
        tv = 0.5 * math.fsum(np.abs(qn - p))
        assert tv <= size + 1e-12 + 2 * (rounding + output), f"TV {tv} > radius" + context
    if ambiguity == "cvar":
        cap = p / size
        tiny = 1.5e-45 if float32 else 5e-324
        assert (q <= cap * (1 + rounding + output) + tiny).all(), "q above p / alpha" + context
    radius_zero = form == "radius" and size == 0 and ambiguity != "wasserstein"
    if radius_zero or (form == "alpha" and size == 1):
        tiny = 1.5e-45 if float32 else 5e-324
        assert (np.abs(q - p) <= p * (rounding + output) + tiny).all(), "q != p at radius 0" + context
    if groups is None and ambiguity != "wasserstein":
        # The raw losses: scaled ones can underflow into false ties.
        check_monotone(l[support], qn[support], p[support], normal, 1e-9 + 4 * output, context)


def solved_level(l, p, groups):
    """The losses and reference the set's solver saw: the samples' (on the support), or each
    group's p-weighted mean and mass."""
    if groups is None:
        return l[p > 0], p[p > 0]
    means, masses = [], []
    for g in np.unique(groups):
        members = groups == g
        mass = math.fsum(p[members])
        if mass > 0:
            means.append(math.fsum(p[members] / mass * l[members]))
            masses.append(mass)
    return np.array(means), np.array(masses)


def threshold_rounding(l, p, eta) -> float:
    """The relative error of chi2's weights p (l - eta)_+ / S, S = sum p (l - eta)_+: eta carries
    an absolute rounding of eps times the losses' range, so q_i is off by p_i eps range / S.
    Negligible unless the active losses cluster far below the max: a precision limit, reported
    (1e-6 apart in a range of 1e6 loses four digits; 1e-160 apart, everything, as pinned by the
    xfail in test_edge_cases.py). As in fuzz/src/lib.rs."""
    if eta is None or not math.isfinite(eta):
        return 0.0
    top, bottom = float(np.max(l)), float(np.min(l))
    spread = top * 0.5 - bottom * 0.5
    if not spread > 0:
        return 0.0
    s = math.fsum(p * np.maximum((l * 0.5 - eta * 0.5) / spread, 0.0))
    return 4 * 2.0**-52 / s if s > 0 else 0.0


def check_monotone(l, q, p, normal, slack, context):
    """q / p nondecreasing in the loss, equal across ties; where q is subnormal or zero, its
    log-ratio is only bounded above by log(normal / p)."""
    with np.errstate(divide="ignore"):
        exact = q >= normal
        lo = np.where(exact, np.log(np.maximum(q, normal)) - np.log(p), -np.inf)
        hi = np.where(exact, lo, np.log(normal) - np.log(p))
    order = np.argsort(l, kind="stable")
    below = -np.inf
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and l[order[j]] == l[order[i]]:
            j += 1
        tie = order[i:j]
        highest_lo, lowest_hi = float(np.max(lo[tie])), float(np.min(hi[tie]))
        assert below <= lowest_hi + slack, f"q / p falls as the loss rises to {l[order[i]]}" + context
        assert highest_lo <= lowest_hi + slack, f"tied losses {l[order[i]]} get different q / p" + context
        below = max(below, highest_lo)
        i = j


def solve_or_reject(losses, ambiguity, form, size, reference=None, **extra):
    """worst_case, or None where it raised ValueError on an invalid problem."""
    valid = is_valid(losses, reference, form, size)
    try:
        result = worst_case(losses, ambiguity, reference=reference, **{form: size}, **extra)
    except ValueError as error:
        assert str(error), "an empty error message"
        assert not valid, (
            f"a valid problem was rejected: {error}\nlosses={losses!r} reference={reference!r} {form}={size!r}"
        )
        return None
    assert valid, f"an invalid problem was accepted\nlosses={losses!r} reference={reference!r} {form}={size!r}"
    return result


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("ambiguity,form", SETS)
@given(data=st.data())
def test_arbitrary_input_is_solved_or_rejected_with_value_error(ambiguity, form, data):
    n = data.draw(st.integers(1, 24))
    element = st.floats() | st.sampled_from(SPECIAL) | st.integers(-3, 3).map(float)
    losses = data.draw(arrays(np.float64, n, elements=element))
    reference = data.draw(references(n) | arrays(np.float64, n, elements=st.floats()))
    size = data.draw(budgets(form))
    result = solve_or_reject(losses, ambiguity, form, size, reference)
    if result is not None:
        check_solution(losses, reference, ambiguity, form, size, result.weights, result.value, dual=result.dual)


@pytest.mark.parametrize("ambiguity,form", SETS)
@given(data=st.data())
def test_extreme_magnitudes_of_mixed_signs(ambiguity, form, data):
    n = data.draw(st.integers(1, 32))
    losses = data.draw(arrays(np.float64, n, elements=extreme_floats()))
    reference = data.draw(references(n))
    size = data.draw(budgets(form).filter(lambda x: is_valid(np.zeros(1), None, form, x)))
    result = solve_or_reject(losses, ambiguity, form, size, reference)
    if result is not None:
        check_solution(losses, reference, ambiguity, form, size, result.weights, result.value, dual=result.dual)


@given(data=st.data())
def test_float32_near_its_limits(data):
    ambiguity, form = data.draw(st.sampled_from(SETS))
    n = data.draw(st.integers(1, 32))
    losses = data.draw(arrays(np.float32, n, elements=float32_edges()))
    reference = data.draw(references(n))
    size = data.draw(budgets(form).filter(lambda x: is_valid(np.zeros(1), None, form, x)))
    result = solve_or_reject(losses, ambiguity, form, size, reference)
    if result is not None:
        assert result.weights.dtype == np.float32
        check_solution(losses, reference, ambiguity, form, size, result.weights, result.value, dual=result.dual)


def test_float32_weights_rounded_twice_still_sum_to_the_value():
    # Found by hypothesis (test_float32_near_its_limits): p/n = 1/14 stored in float32, then
    # times 14/9, gives each of the nine tied weights 1/9 plus 1.1 ulp, and sum q l exceeded V*
    # = max l by 1.25 * 2^-24 of it: within two roundings, not one.
    big = float(np.finfo(np.float32).max)
    losses = np.array([-big] * 5 + [big] * 9, dtype=np.float32)
    result = worst_case(losses, "kl", penalty=1e-12)
    assert result.value == big
    check_solution(losses, None, "kl", "penalty", 1e-12, result.weights, result.value, dual=result.dual)


@given(data=st.data())
def test_groups_with_hostile_labels(data):
    ambiguity, form = data.draw(st.sampled_from(SETS))
    n = data.draw(st.integers(1, 24))
    losses = data.draw(arrays(np.float64, n, elements=extreme_floats() | st.integers(-2, 2).map(float)))
    labels = data.draw(arrays(np.int64, n, elements=st.integers(0, 3) | st.integers(0, 2**62)))
    reference = data.draw(references(n))
    size = data.draw(budgets(form).filter(lambda x: is_valid(np.zeros(1), None, form, x)))
    result = solve_or_reject(losses, ambiguity, form, size, reference, groups=labels)
    if result is not None:
        check_solution(
            losses, reference, ambiguity, form, size, result.weights, result.value, groups=labels, dual=result.dual
        )


@given(data=st.data())
def test_negative_labels_are_a_value_error(data):
    n = data.draw(st.integers(1, 8))
    labels = data.draw(arrays(np.int64, n, elements=st.integers(-(2**63), 3)))
    losses = np.arange(n, dtype=np.float64)
    if (labels < 0).any():
        with pytest.raises(ValueError):
            robust_weights(losses, "kl", radius=0.1, groups=labels)
    else:
        check_solution(
            losses,
            None,
            "kl",
            "radius",
            0.1,
            robust_weights(losses, "kl", radius=0.1, groups=labels),
            worst_case(losses, "kl", radius=0.1, groups=labels).value,
            groups=labels,
        )


@given(data=st.data())
def test_wasserstein_on_extreme_features(data):
    form = data.draw(st.sampled_from(["radius", "penalty"]))
    n = data.draw(st.integers(1, 12))
    dim = data.draw(st.integers(1, 3))
    losses = data.draw(arrays(np.float64, n, elements=extreme_floats()))
    features = data.draw(arrays(np.float64, (n, dim), elements=extreme_floats() | st.integers(-2, 2).map(float)))
    reference = data.draw(references(n))
    size = data.draw(budgets(form).filter(lambda x: is_valid(np.zeros(1), None, form, x)))
    p = data.draw(st.sampled_from([1.0, 2.0, 1.5, 3.0]))
    result = solve_or_reject(losses, "wasserstein", form, size, reference, features=features, p=p)
    if result is not None:
        check_solution(losses, reference, "wasserstein", form, size, result.weights, result.value)


@given(data=st.data())
def test_rows_each_keep_the_invariants(data):
    ambiguity, form = data.draw(st.sampled_from(SETS))
    rows = data.draw(st.integers(1, 4))
    n = data.draw(st.integers(1, 12))
    dtype = data.draw(st.sampled_from([np.float64, np.float32]))
    element = extreme_floats() if dtype == np.float64 else float32_edges()
    losses = data.draw(arrays(dtype, (rows, n), elements=element))
    size = data.draw(budgets(form).filter(lambda x: is_valid(np.zeros(1), None, form, x)))
    result = worst_case(losses, ambiguity, **{form: size})
    assert result.weights.shape == losses.shape and result.weights.dtype == dtype
    for r in range(rows):
        check_solution(
            losses[r],
            None,
            ambiguity,
            form,
            size,
            result.weights[r],
            float(result.value[r]),
            dual=None if result.dual is None else float(result.dual[r]),
        )
