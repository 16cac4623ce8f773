"""benches/paired.py, the speed-ups timed in pairs: its rounds and ratios, with stand-in timings
(no clock involved), and one short real run of its table."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHES = Path(__file__).resolve().parent.parent / "benches"


@pytest.fixture(scope="module")
def paired():
    sys.path.insert(0, str(BENCHES))
    try:
        yield importlib.import_module("paired")
    finally:
        sys.path.remove(str(BENCHES))


def stand_in(seconds_per_call: float, drift: list):
    """A run whose calls take seconds_per_call times the machine's current slowness."""

    def run(count: int) -> float:
        return count * seconds_per_call * drift[0]

    return run


def test_a_drift_that_slows_both_sides_cancels_in_every_round(paired):
    drift = [1.0]
    fast, slow = stand_in(1e-6, drift), stand_in(4e-5, drift)

    def drifting(count: int) -> float:
        drift[0] = 3.0 if drift[0] == 1.0 else 1.0  # the machine's speed flips between rounds
        return fast(count)

    rounds = paired.paired(drifting, slow, seconds=0.05)
    assert len(rounds) >= paired.MIN_ROUNDS
    assert {round(first * 1e6, 6) for first, _ in rounds} == {1.0, 3.0}
    assert paired.ratios(rounds) == pytest.approx([40.0] * len(rounds))


def test_rounds_last_about_round_seconds_a_side(paired):
    assert paired.calls_per_round(stand_in(1e-6, [1.0])) == round(paired.ROUND_SECONDS / 1e-6)
    assert paired.calls_per_round(stand_in(1.0, [1.0])) == 1


def test_spread_is_the_median_and_quartiles(paired):
    assert paired.spread([1.0, 2.0, 3.0, 4.0, 5.0]) == "3.0 [2.0, 4.0]"


def test_the_table_has_a_row_and_a_verdict_per_set(paired, capsys):
    # The copies at a size small enough for a test: no target there (it is set at 2^20).
    assert paired.main(["--seconds", "0.01", "--large-sizes", "4096"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith(tuple(paired.CALLS))]
    assert len(rows) == 2 * len(paired.CALLS)
    speedups, copies = rows[: len(paired.CALLS)], rows[len(paired.CALLS) :]
    assert all("50x: " in line and "<5 us: " in line for line in speedups)
    for line in copies:
        median = float(line.split("[")[0].split()[-1])
        assert 0.0 < median < 1e3 and "copies:" not in line


def test_the_copies_at_2_20_carry_their_target(paired, capsys, monkeypatch):
    # A stand-in pairing: the core at four copies' time in every round.
    monkeypatch.setattr(paired, "paired", lambda first, second, seconds: [(4e-3, 1e-3)] * paired.MIN_ROUNDS)
    line = paired.copies_row("kl radius", paired.LARGE_N, 0.0)
    assert "4.0 [4.0, 4.0]" in line and "<=10 copies: reached" in line
