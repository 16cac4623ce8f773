"""The obvious numpy implementation of the worst-case weights (docs/method.md).

It is the comparison point of the benchmark and a second oracle in the tests, so it is
written the way one would write it first: numpy passes, bisection on the one dual variable
(tau for ``kl``, eta for ``chi2`` and ``cvar``), a sort for ``tv``. It follows the same
conventions as :func:`dro_rebel.robust_weights` (reference normalised, groups solved as a
mixture, the same edge cases) but takes numpy input only, 1-D or 2-D (rows in a loop).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

import numpy as np

__all__ = ["robust_weights"]

# Bisection stops when the bracket is this narrow (in units of the spread of the losses, or
# relative for the KL temperature): about 50 passes.
_BISECTION_TOL = 1e-15
_MAX_BISECTIONS = 400


def robust_weights(
    losses: Any,
    ambiguity: str,
    *,
    radius: Optional[float] = None,
    penalty: Optional[float] = None,
    alpha: Optional[float] = None,
    reference: Any = None,
    groups: Any = None,
    p: float = 1.0,
    features: Any = None,
    cost: Any = None,
) -> np.ndarray:
    """Worst-case weights q*, same shape as ``losses`` (float32 for float32, else float64)."""
    losses = np.asarray(losses)
    if losses.dtype.kind not in "fiu":
        raise ValueError(f"losses must hold real numbers, got dtype {losses.dtype}")
    out_dtype = np.float32 if losses.dtype == np.float32 else np.float64
    values = losses.astype(np.float64)
    if ambiguity == "wasserstein":
        from dro_rebel.baseline_wasserstein import wasserstein_weights

        return wasserstein_weights(
            values,
            radius=radius,
            penalty=penalty,
            reference=reference,
            p=p,
            features=features,
            cost=cost,
        ).astype(out_dtype)
    if ambiguity not in ("kl", "chi2", "cvar", "tv"):
        raise ValueError(f"unknown ambiguity set {ambiguity!r}")
    if values.ndim == 1:
        rows, squeeze = values[None, :], True
    elif values.ndim == 2:
        rows, squeeze = values, False
    else:
        raise ValueError(f"losses must be 1-D or 2-D, got shape {values.shape}")
    if rows.size == 0:
        raise ValueError("losses are empty")
    solve = _budgeted(ambiguity, radius, penalty, alpha)
    out = np.empty_like(rows)
    for k, row in enumerate(rows):
        ref = _row_of(reference, k, row.shape[0], "reference")
        labels = _row_of(groups, k, row.shape[0], "groups")
        out[k] = _solve_row(row, ref, labels, solve)
    return (out[0] if squeeze else out).astype(out_dtype)


def _budgeted(ambiguity: str, radius, penalty, alpha):
    """The solver of one problem (losses l, reference p) -> q, with its budget checked."""
    if ambiguity == "cvar":
        if alpha is None or radius is not None or penalty is not None:
            raise ValueError("cvar takes alpha only")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        return partial(_cvar, alpha)
    if alpha is not None:
        raise ValueError("alpha is for cvar only")
    if (radius is None) == (penalty is None):
        raise ValueError("give exactly one of radius and penalty")
    if radius is not None:
        if not radius >= 0.0:
            raise ValueError(f"radius must be non-negative, got {radius}")
        return partial({"kl": _kl_radius, "chi2": _chi2_radius, "tv": _tv}[ambiguity], radius)
    if not penalty > 0.0:
        raise ValueError(f"penalty must be positive, got {penalty}")
    if ambiguity == "tv":
        raise ValueError("tv has no penalised form")
    return partial({"kl": _kl_temperature, "chi2": _chi2_penalty}[ambiguity], penalty)


def _row_of(values: Any, k: int, n: int, name: str) -> Optional[np.ndarray]:
    if values is None:
        return None
    values = np.asarray(values)
    if values.ndim == 2:
        values = values[k]
    if values.shape != (n,):
        raise ValueError(f"{name} has shape {values.shape}, need ({n},)")
    return values


def _solve_row(l: np.ndarray, ref: Optional[np.ndarray], labels: Optional[np.ndarray], solve) -> np.ndarray:
    if not np.all(np.isfinite(l)):
        raise ValueError("losses must be finite")
    n = l.shape[0]
    if ref is None:
        p = np.full(n, 1.0 / n)
    else:
        ref = np.asarray(ref, dtype=np.float64)
        if not np.all(np.isfinite(ref)) or np.any(ref < 0) or ref.sum() <= 0:
            raise ValueError("reference must be finite, non-negative and not all zero")
        p = ref / ref.sum()
    if labels is None:
        return solve(l, p)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or np.any(labels < 0):
        raise ValueError("groups must be non-negative integer labels")
    _, index = np.unique(labels, return_inverse=True)
    mass = np.bincount(index, weights=p)
    total = np.bincount(index, weights=p * l)
    group_losses = np.divide(total, mass, out=np.zeros_like(total), where=mass > 0)
    group_weights = solve(group_losses, mass)
    share = np.divide(p, mass[index], out=np.zeros_like(p), where=mass[index] > 0)
    return group_weights[index] * share


# --- shared edge cases --------------------------------------------------------------------


def _support_extremes(l: np.ndarray, p: np.ndarray):
    on = l[p > 0]
    return on.max(), on.min()


def _argmax(l: np.ndarray, p: np.ndarray, top: float) -> np.ndarray:
    q = np.where((l == top) & (p > 0), p, 0.0)
    return q / q.sum()


def _prescale(top: float, bottom: float) -> float:
    """A power of two that keeps max - min finite and 1 / (max - min) finite."""
    return 0.5 if top * 0.5 - bottom * 0.5 >= 1e-290 else 2.0**600


def _scaled(l: np.ndarray, top: float, bottom: float) -> np.ndarray:
    """u = (l - max) / (max - min) in [-1, 0], without overflow for losses near 1e308."""
    pre = _prescale(top, bottom)
    return (l * pre - top * pre) / (top * pre - bottom * pre)


def _in_u_units(dl: float, top: float, bottom: float) -> float:
    """A difference of losses (a temperature, a penalty) in the units of u."""
    pre = _prescale(top, bottom)
    return (dl * pre) / (top * pre - bottom * pre)


# --- kl -----------------------------------------------------------------------------------


def _tilt(u: np.ndarray, p: np.ndarray, beta: float) -> np.ndarray:
    w = np.where(p > 0, p * np.exp(beta * np.minimum(u, 0.0)), 0.0)
    return w / w.sum()


def _kl_divergence(q: np.ndarray, p: np.ndarray) -> float:
    on = q > 0
    return float(np.sum(q[on] * np.log(q[on] / p[on])))


def _kl_radius(radius: float, l: np.ndarray, p: np.ndarray) -> np.ndarray:
    top, bottom = _support_extremes(l, p)
    if radius == 0.0 or top == bottom:
        return p.copy()
    mass_at_max = p[(l == top) & (p > 0)].sum()
    if radius >= -np.log(mass_at_max):
        return _argmax(l, p, top)
    u = _scaled(l, top, bottom)
    # Bisection on log(beta), beta = 1 / tau in the units of u: KL(q_beta || p) rises in beta.
    lo, hi = 1.0, 1.0
    while _kl_divergence(_tilt(u, p, lo), p) > radius:
        lo *= 0.5
    while _kl_divergence(_tilt(u, p, hi), p) < radius:
        hi *= 2.0
    for _ in range(_MAX_BISECTIONS):
        if hi - lo <= _BISECTION_TOL * hi:
            break
        mid = np.sqrt(lo * hi)
        if _kl_divergence(_tilt(u, p, mid), p) < radius:
            lo = mid
        else:
            hi = mid
    return _tilt(u, p, 0.5 * (lo + hi))


def _kl_temperature(tau: float, l: np.ndarray, p: np.ndarray) -> np.ndarray:
    top, bottom = _support_extremes(l, p)
    if top == bottom:
        return p.copy()
    tau_u = _in_u_units(tau, top, bottom)
    if tau_u == 0.0:
        return _argmax(l, p, top)
    return _tilt(_scaled(l, top, bottom), p, 1.0 / tau_u)


# --- chi2 ---------------------------------------------------------------------------------


def _chi2_radius(radius: float, l: np.ndarray, p: np.ndarray) -> np.ndarray:
    top, bottom = _support_extremes(l, p)
    if radius == 0.0 or top == bottom:
        return p.copy()
    c = 1.0 + 2.0 * radius
    if c * p[(l == top) & (p > 0)].sum() >= 1.0:
        return _argmax(l, p, top)
    u = np.where(p > 0, _scaled(l, top, bottom), -np.inf)
    on = p > 0
    # The dual eta + sqrt(c) sqrt(S2(eta)) has slope 1 - sqrt(c) S1 / sqrt(S2), negative below
    # the optimum and positive above; with every loss active the root is m - sqrt(v / (c - 1)).
    mean = np.sum(p[on] * u[on])
    variance = max(np.sum(p[on] * (u[on] - mean) ** 2), 0.0)
    lo = min(-1.0, mean - np.sqrt(variance / (c - 1.0))) - 1.0
    hi = 0.0
    sqrt_c = np.sqrt(c)

    def slope(eta: float) -> float:
        d = np.maximum(u - eta, 0.0)
        s1 = np.sum(p * d)
        s2 = np.sum(p * d * d)
        return 1.0 - sqrt_c * s1 / np.sqrt(s2)

    for _ in range(_MAX_BISECTIONS):
        mid = 0.5 * (lo + hi)
        if hi - lo <= _BISECTION_TOL or mid in (lo, hi):
            break
        if slope(mid) < 0.0:
            lo = mid
        else:
            hi = mid
    q = p * np.maximum(u - 0.5 * (lo + hi), 0.0)
    return q / q.sum()


def _chi2_penalty(lam: float, l: np.ndarray, p: np.ndarray) -> np.ndarray:
    top, bottom = _support_extremes(l, p)
    if top == bottom:
        return p.copy()
    u = np.where(p > 0, _scaled(l, top, bottom), -np.inf)
    lam_u = _in_u_units(lam, top, bottom)
    if lam_u == 0.0:
        return _argmax(l, p, top)
    if not np.isfinite(lam_u):
        return p.copy()
    # q_i = p_i (u_i - t)_+ / lam with sum_i p_i (u_i - t)_+ = lam: that sum falls in t.
    lo, hi = -1.0 - lam_u, 0.0
    for _ in range(_MAX_BISECTIONS):
        mid = 0.5 * (lo + hi)
        if hi - lo <= _BISECTION_TOL * max(1.0, abs(lo)) or mid in (lo, hi):
            break
        if np.sum(p * np.maximum(u - mid, 0.0)) > lam_u:
            lo = mid
        else:
            hi = mid
    q = p * np.maximum(u - 0.5 * (lo + hi), 0.0)
    return q / q.sum()


# --- cvar ---------------------------------------------------------------------------------


def _cvar(alpha: float, l: np.ndarray, p: np.ndarray) -> np.ndarray:
    top, bottom = _support_extremes(l, p)
    if alpha >= 1.0 or top == bottom:
        return p.copy()
    if alpha <= p[(l == top) & (p > 0)].sum():
        return _argmax(l, p, top)
    on = p > 0
    lp, pp = l[on], p[on]

    def mass_above(eta: float) -> float:
        return float(pp[lp > eta].sum())

    # The quantile eta: mass{l > eta} < alpha <= mass{l >= eta}. Bisection on eta keeps
    # mass_above(lo) >= alpha > mass_above(hi) until lo and hi are adjacent floats: then hi
    # is the quantile, exactly (it is one of the losses).
    if mass_above(bottom) < alpha:
        eta = bottom
    else:
        lo, hi = bottom, top
        while True:
            mid = 0.5 * lo + 0.5 * hi
            if mid <= lo or mid >= hi:
                break
            if mass_above(mid) >= alpha:
                lo = mid
            else:
                hi = mid
        eta = hi
    above = mass_above(eta)
    at = float(pp[lp == eta].sum())
    share = min(max((alpha - above) / at, 0.0), 1.0) / alpha
    return np.where(p > 0, np.where(l > eta, p / alpha, np.where(l == eta, p * share, 0.0)), 0.0)


# --- tv -----------------------------------------------------------------------------------


def _tv(radius: float, l: np.ndarray, p: np.ndarray) -> np.ndarray:
    top, bottom = _support_extremes(l, p)
    if radius == 0.0 or top == bottom:
        return p.copy()
    at_max = (l == top) & (p > 0)
    mass_at_max = p[at_max].sum()
    if radius >= max(1.0 - mass_at_max, 0.0):
        return _argmax(l, p, top)
    # Take radius of mass from the smallest losses (ties at the cut in proportion to p) and
    # give it to the largest (ties in proportion to p).
    # The cut is the lower quantile: mass{l < cut} < radius <= mass{l <= cut}.
    order = np.argsort(l, kind="stable")
    sorted_l, sorted_p = l[order], p[order]
    cut = sorted_l[min(np.searchsorted(np.cumsum(sorted_p), radius, side="left"), len(l) - 1)]
    if cut >= top:
        return _argmax(l, p, top)
    below = p[l < cut].sum()
    at = p[l == cut].sum()
    kept = min(max(1.0 - (radius - below) / at, 0.0), 1.0)
    q = np.where(l < cut, 0.0, np.where(l == cut, p * kept, p))
    q = np.where(at_max, p * (1.0 + radius / mass_at_max), q)
    return q
