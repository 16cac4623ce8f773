"""The problems every benchmark of the core times: the sets, the sizes and the losses."""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np

SIZES = [64, 1024, 16384, 1048576]

# name -> the call of an implementation `solve` on the losses `values`, as a statement written
# the way a training loop writes it: with its keywords in the source. (A call through `**size`
# builds and unpacks a dict first, which costs a METH_FASTCALL function such as robust_weights
# a sizeable share of a small call.)
CALLS = {
    "kl radius": 'solve(values, "kl", radius=0.1)',
    "chi2 radius": 'solve(values, "chi2", radius=0.5)',
    "cvar alpha": 'solve(values, "cvar", alpha=0.1)',
    "tv radius": 'solve(values, "tv", radius=0.1)',
    "chi2 penalty": 'solve(values, "chi2", penalty=1.0)',
    "kl penalty": 'solve(values, "kl", penalty=1.0)',
}


def call(name: str) -> Callable[[Callable, np.ndarray], np.ndarray]:
    """The call as a function of (solve, values), for pytest-benchmark, which times functions."""
    return eval(f"lambda solve, values: {CALLS[name]}")  # the statement above, compiled as is


# Calls per timed round of pytest-benchmark, by n: at small n the statement runs in a loop of
# its own, as a training loop runs it. Called once a round through a Python function (the
# `call` above), a call pays for that function's frame too (the no-op call of
# benches/test_bench_core.py), which at n = 64 understates the speed-ups that paired.py, timing
# timeit's loop, reads in the same run.
CALLS_PER_ROUND = {64: 100, 1024: 10}


def looped(statement: str, calls: int) -> Callable[[Callable, np.ndarray], None]:
    """A function of (solve, values) that runs the statement `calls` times in one loop."""
    namespace: dict = {}
    exec(f"def run(solve, values):\n    for _ in range({calls}):\n        {statement}\n", namespace)
    return namespace["run"]


@lru_cache(maxsize=None)
def losses(n: int) -> np.ndarray:
    """Squared residuals, as REBEL's regression losses are: non-negative, right-skewed."""
    values = np.random.default_rng(0).standard_normal(n) ** 2
    values.flags.writeable = False
    return values
