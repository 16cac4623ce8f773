"""benches/bench_table.py: the table it prints from pytest-benchmark's JSON."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHES = Path(__file__).resolve().parent.parent / "benches"


@pytest.fixture(scope="module")
def bench_table():
    sys.path.insert(0, str(BENCHES))
    try:
        yield importlib.import_module("bench_table")
    finally:
        sys.path.remove(str(BENCHES))


def bench(implementation: str, median: float, **info) -> dict:
    return {"stats": {"median": median}, "extra_info": {"implementation": implementation, **info}}


def test_rounds_of_several_calls_are_divided_into_calls(bench_table, tmp_path):
    # At n = 64 a round runs the call 100 times: 55 us a round is 0.55 us a call.
    rounds = [
        bench("rust", 55e-6, set="kl penalty", n=64, calls=100, matched=True),
        bench("baseline", 3.1e-3, set="kl penalty", n=64, calls=100, matched=True),
        bench("no-op call", 10e-6, calls=100),
        bench("rust", 2e-3, set="kl penalty", n=1_048_576, matched=True),
        bench("baseline", 30e-3, set="kl penalty", n=1_048_576, matched=True),
        bench("np.copy", 0.5e-3, n=1_048_576),
    ]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": rounds}))
    table = bench_table.render(bench_table.load(str(path)))
    assert "no-op Python call: 100 ns" in table
    small = next(line for line in table.splitlines() if line.startswith("kl penalty") and " 64 " in line)
    assert "0.55 us" in small and "56.4x" in small and "50x: reached" in small
    large = next(line for line in table.splitlines() if "1048576" in line and line.startswith("kl penalty"))
    assert "2.00 ms" in large and "15.0x" in large and "4.0x" in large and "<=10 copies: reached" in large
