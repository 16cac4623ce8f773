"""The core against the numpy baseline (dro_rebel.baseline), and the floors measured in the
same run: a numpy copy of the input (one pass over memory) and a no-op Python call.

    make bench        # or:
    .venv/bin/python -m pytest benches -m benchmark --benchmark-only \\
        --benchmark-min-rounds=3 --benchmark-max-time=0.5 --benchmark-min-time=0.0001 \\
        --benchmark-warmup=on --benchmark-json=runs/bench.json
    .venv/bin/python benches/bench_table.py runs/bench.json

Each round runs for at least 100 us (`--benchmark-min-time`), so a call of under 1 us is timed
over a hundred or more loops: with pytest-benchmark's default of 5 us, and no warm-up, a round
was a single call, and the clock's own cost went into every sub-microsecond figure. At n = 64 and 1024 the
benchmarked function runs the call in a loop of its own (`problems.CALLS_PER_ROUND`), and the
JSON's times are per round: `extra_info["calls"]` says by how much `bench_table.py`
divides them.

Targets (docs/performance.md#targets): at n = 64 at least 50x the baseline and under 5 us per
call from Python; at n = 1,048,576 at least 10x the baseline and no slower than 10 copies.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from problems import CALLS, CALLS_PER_ROUND, SIZES, call, looped, losses

from dro_rebel import baseline, robust_weights

IMPLEMENTATIONS = {"rust": robust_weights, "baseline": baseline.robust_weights}


@lru_cache(maxsize=None)
def answers(name: str, n: int) -> tuple:
    """Both implementations' weights, once per problem, and whether they agree (in shape too)."""
    rust = call(name)(robust_weights, losses(n))
    base = call(name)(baseline.robust_weights, losses(n))
    if rust.shape != base.shape or rust.shape != (n,):
        return False, float("inf")
    difference = float(np.max(np.abs(rust - base)))
    return difference <= 1e-9 * float(np.max(base)), difference


# The implementation varies fastest, so that the core and the baseline of one problem are timed
# one after the other: the machine drifts between minutes far more than between seconds.
@pytest.mark.benchmark
@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("name", list(CALLS))
@pytest.mark.parametrize("n", SIZES)
def test_weights(benchmark, implementation, name, n):
    solve = IMPLEMENTATIONS[implementation]
    values = losses(n)
    matched, difference = answers(name, n)
    calls = CALLS_PER_ROUND.get(n, 1)
    benchmark.group = f"{name} n={n}"
    benchmark.extra_info.update(
        implementation=implementation, set=name, n=n, calls=calls, matched=matched, max_abs_difference=difference
    )
    benchmark(looped(CALLS[name], calls), solve, values)
    assert matched, f"rust and baseline differ by {difference} on {name} n={n}"


@pytest.mark.benchmark
@pytest.mark.parametrize("n", SIZES)
def test_floor_copy(benchmark, n):
    benchmark.group = f"np.copy n={n}"
    benchmark.extra_info.update(implementation="np.copy", n=n)
    benchmark(np.copy, losses(n))


def _noop(losses, ambiguity, *, radius):
    return losses


# The cost of a call of a Python function that does nothing, in the same loop as the solves
# at n = 64.
@pytest.mark.benchmark
def test_floor_noop_call(benchmark):
    calls = CALLS_PER_ROUND[64]
    benchmark.group = "no-op call"
    benchmark.extra_info.update(implementation="no-op call", calls=calls)
    benchmark(looped('solve(values, "chi2", radius=0.5)', calls), _noop, losses(64))
