"""Paired comparisons over training seeds: the mean difference, its 95% Student-t interval, a
two-sided p-value, and Holm's correction across a family of comparisons."""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
from scipy import stats

__all__ = ["paired_difference", "holm"]


def paired_difference(treated: Sequence[float], control: Sequence[float], level: float = 0.95) -> Dict[str, object]:
    """treated - control, seed by seed (the same seed order in both): mean, interval, p-value of
    the paired t-test against no difference."""
    differences = np.asarray(treated, dtype=float) - np.asarray(control, dtype=float)
    n = differences.size
    mean = float(differences.mean())
    if n < 2:
        return {"mean_difference": mean, "ci95": [float("nan"), float("nan")], "p": float("nan"), "seeds": n}
    error = differences.std(ddof=1) / np.sqrt(n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * error)
    if error == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(mean) / error, n - 1))
    return {"mean_difference": mean, "ci95": [mean - half, mean + half], "p": p, "seeds": n}


def holm(p_values: Sequence[float]) -> List[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()
