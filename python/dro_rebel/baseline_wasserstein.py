"""The obvious numpy solve of the Wasserstein worst case, and the exact linear program: the
comparison points of the benchmark and the oracles of the tests.

:func:`wasserstein_weights` is the numpy baseline, with the conventions of
``robust_weights(losses, "wasserstein", ...)``; ``dro_rebel.baseline.robust_weights(...,
"wasserstein", ...)`` hands its 1-D problems to it. :func:`wasserstein_linprog` is the linear
program over transport plans, solved by scipy's HiGHS (scipy is imported only when it is
called).

The problem (docs/method.md#wasserstein): maximise sum_j q_j l_j over the q reachable from the reference
p by a transport plan pi >= 0 with row sums p and sum_ij pi_ij d_ij^p <= radius^p, targets on the
support of p. Its dual, min_{lam >= 0} lam radius^p + sum_i p_i max_j (l_j - lam d_ij^p), is what
the baseline bisects on.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["wasserstein_weights", "wasserstein_linprog", "wasserstein_costs"]

# Bisection steps on lam: enough to reach adjacent floats from any bracket.
_BISECTION_STEPS = 200

# Rows of the broadcast difference x[i] - x[j] computed at once (about 64 MiB of float64).
_BLOCK_ENTRIES = 1 << 23


def wasserstein_costs(
    n: int, *, p: float = 1.0, features: Optional[np.ndarray] = None, cost: Optional[np.ndarray] = None
) -> np.ndarray:
    """The n x n costs d_ij ** p, from features (Euclidean distances, by broadcasting in blocks
    of rows) or from a distance matrix."""
    if (features is None) == (cost is None):
        raise ValueError("give exactly one of features= and cost=")
    if cost is not None:
        return np.asarray(cost, dtype=np.float64) ** p
    x = np.asarray(features, dtype=np.float64)
    distances = np.empty((n, n))
    rows = max(1, _BLOCK_ENTRIES // max(1, n * x.shape[1]))
    for start in range(0, n, rows):
        diff = x[start : start + rows, None, :] - x[None, :, :]
        distances[start : start + rows] = np.sqrt((diff * diff).sum(axis=-1))
    return distances**p


def wasserstein_weights(
    losses,
    *,
    radius: Optional[float] = None,
    penalty: Optional[float] = None,
    p: float = 1.0,
    features=None,
    cost=None,
    reference=None,
) -> np.ndarray:
    """Worst-case weights q over the type-p Wasserstein ball (``radius``) or for a fixed dual
    variable lam (``penalty``), by the obvious method: the cost matrix by numpy broadcasting,
    then bisection on lam until the bracket is down to adjacent floats, and the plans at both
    ends mixed so that the transport cost equals radius ** p.

    Ties between targets go to the cheapest one, the source itself first (as in the Rust core);
    the weights can differ from the core's where the worst case is not unique, the value
    ``q @ losses`` cannot.
    """
    if (radius is None) == (penalty is None):
        raise ValueError("give exactly one of radius and penalty")
    l = np.asarray(losses, dtype=np.float64)
    n = l.shape[0]
    ref = np.full(n, 1.0 / n) if reference is None else np.asarray(reference, dtype=np.float64)
    ref = ref / ref.sum()
    costs = wasserstein_costs(n, p=p, features=features, cost=cost)
    support = ref > 0
    targets = np.where(support, l, -np.inf)

    def argmax_at(lam: float, exact_ties: bool) -> np.ndarray:
        values = targets[None, :] - lam * costs if np.isfinite(lam) else np.where(costs == 0, targets, -np.inf)
        if not exact_ties:
            return values.argmax(axis=1)
        tied = values == values.max(axis=1, keepdims=True)
        cheapest = np.where(tied, costs, np.inf).argmin(axis=1)
        rows = np.arange(n)
        return np.where(tied[rows, rows], rows, cheapest)

    def weights_of(assignment: np.ndarray) -> np.ndarray:
        return np.bincount(assignment, weights=ref, minlength=n)

    def cost_of(assignment: np.ndarray) -> float:
        return float(ref @ costs[np.arange(n), assignment])

    if penalty is not None:
        return weights_of(argmax_at(float(penalty), exact_ties=True))
    budget = float(radius) ** p
    at_zero = argmax_at(0.0, exact_ties=True)
    if cost_of(at_zero) <= budget:
        return weights_of(at_zero)
    if budget == 0.0:
        return weights_of(argmax_at(np.inf, exact_ties=True))
    # The bracket keeps the assignment seen at each end: cost above the budget at lo (far), at
    # or below it at hi (near); at adjacent floats both are optimal at the kink lam*.
    lo, far = 0.0, at_zero
    hi = (l.max() - l.min()) / costs.max()
    near = argmax_at(hi, exact_ties=False)
    while cost_of(near) > budget:
        lo, far = hi, near
        hi = 2.0 * hi
        near = argmax_at(hi, exact_ties=False)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        assignment = argmax_at(mid, exact_ties=False)
        if cost_of(assignment) > budget:
            lo, far = mid, assignment
        else:
            hi, near = mid, assignment
    c_far, c_near = cost_of(far), cost_of(near)
    theta = (budget - c_near) / (c_far - c_near)
    return theta * weights_of(far) + (1.0 - theta) * weights_of(near)


def wasserstein_linprog(losses, *, radius: float, p: float = 1.0, features=None, cost=None, reference=None):
    """The exact worst case as a linear program over transport plans (scipy HiGHS).

    Variables pi_ij >= 0 for i, j on the support of p; row sums p_i; sum_ij pi_ij d_ij^p <=
    radius ** p; maximise sum_j (sum_i pi_ij) l_j. Returns (q, V*, pi) with pi as a dense
    n x n array.
    """
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix, vstack

    l = np.asarray(losses, dtype=np.float64)
    n = l.shape[0]
    ref = np.full(n, 1.0 / n) if reference is None else np.asarray(reference, dtype=np.float64)
    ref = ref / ref.sum()
    costs = wasserstein_costs(n, p=p, features=features, cost=cost)
    s = np.flatnonzero(ref > 0)
    k = s.size
    sub = costs[np.ix_(s, s)]
    rows = np.repeat(np.arange(k), k)
    row_sums = coo_matrix((np.ones(k * k), (rows, np.arange(k * k))), shape=(k, k * k))
    budget_row = coo_matrix(sub.reshape(1, -1))
    result = linprog(
        -np.tile(l[s], k),
        A_ub=budget_row,
        b_ub=[float(radius) ** p],
        A_eq=vstack([row_sums]),
        b_eq=ref[s],
        bounds=(0, None),
        method="highs",
        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    )
    if result.status != 0:
        raise RuntimeError(f"linprog failed: {result.message}")
    plan = np.zeros((n, n))
    plan[np.ix_(s, s)] = np.maximum(result.x.reshape(k, k), 0.0)
    q = plan.sum(axis=0)
    return q, float(-result.fun), plan
