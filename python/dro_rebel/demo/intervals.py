"""95% confidence intervals for the report: over seeds where a preset has several, otherwise
a bootstrap over the evaluation prompts."""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import numpy as np
from scipy import stats

__all__ = ["over_seeds", "bootstrap"]


def over_seeds(values: Sequence[float], level: float = 0.95) -> Tuple[float, float]:
    """Mean and the half-width of its Student-t interval over independent seeds."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float(values.mean()), float("nan")
    half = stats.t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return float(values.mean()), float(half)


def bootstrap(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    draws: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> float:
    """Half-width of the percentile bootstrap interval of ``statistic(indices)`` when the n
    evaluation prompts are resampled with replacement (half the interval's length)."""
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(draws)])
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float((high - low) / 2)
