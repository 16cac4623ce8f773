"""Wasserstein worst case with features= in 16 dimensions: the Rust core against the numpy
baseline (broadcasting plus bisection on lam) and the exact linear program (scipy HiGHS, at
n = 256 only). Run with `make bench`; each result records whether its value matched Rust's
(to 1e-7 relative)."""

from __future__ import annotations

import numpy as np
import pytest

import dro_rebel
from dro_rebel import worst_case
from dro_rebel.baseline_wasserstein import wasserstein_linprog, wasserstein_weights

DIM = 16
RADIUS = 0.5

pytestmark = [
    pytest.mark.benchmark,
    pytest.mark.skipif(
        dro_rebel.build_profile != "release",
        reason="benchmarks need the release build (make develop)",
    ),
]


def problem(n: int):
    rng = np.random.default_rng(n)
    return rng.standard_normal(n), rng.standard_normal((n, DIM)) / np.sqrt(DIM)


def value_of(implementation: str, losses: np.ndarray, features: np.ndarray) -> float:
    if implementation == "rust":
        return worst_case(losses, "wasserstein", radius=RADIUS, p=1.0, features=features).value
    if implementation == "baseline":
        return float(wasserstein_weights(losses, radius=RADIUS, p=1.0, features=features) @ losses)
    return wasserstein_linprog(losses, radius=RADIUS, p=1.0, features=features)[1]


@pytest.mark.parametrize("n", [256, 1024, 4096])
@pytest.mark.parametrize("implementation", ["rust", "baseline", "linprog"])
def test_wasserstein_features(benchmark, implementation, n):
    if implementation == "linprog" and n > 256:
        pytest.skip("the linear program has n^2 variables: n = 256 only")
    losses, features = problem(n)
    benchmark.group = f"wasserstein n={n}"
    reference = value_of("rust", losses, features)
    if implementation == "rust":
        value = benchmark(value_of, implementation, losses, features)
    else:
        # Seconds per call: a few rounds are enough to compare.
        value = benchmark.pedantic(value_of, args=(implementation, losses, features), rounds=3, iterations=1)
    # The keys of benches/test_bench_core.py, so that `benches/bench_table.py` lists
    # these too (rust against baseline; linprog only here).
    benchmark.extra_info.update(
        implementation=implementation,
        set="wasserstein",
        n=n,
        matched=bool(abs(value - reference) <= 1e-7 * max(1.0, abs(reference))),
        value=value,
    )
    assert benchmark.extra_info["matched"], f"{implementation} gives {value}, rust {reference}"
