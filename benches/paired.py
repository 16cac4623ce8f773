"""The core's speed-ups over the numpy baseline at small n, and its time in copies of the input
at n = 2^20, timed in pairs.

    .venv/bin/python benches/paired.py [--seconds 1.0] [--sizes 64 1024] [--large-sizes 1048576]
                                       [--batch 4096 64]

On a shared machine whose speed drifts by 2x within minutes, the medians of pytest-benchmark
(benches/test_bench_core.py) time the core and the baseline at different moments, and the
ratio of two medians taken minutes apart can swing by that factor. Here every round times the
core and then its comparison straight after, so a drift that slows both cancels in that
round's ratio, and the table gives the median and quartiles of the ratios over the rounds,
with the targets at n = 64.

The speed-ups are timed for small batches only: a round there is hundreds of calls of each.
At n = 2^20 it would be a single call of the core, which the baseline's allocations in between
leave cold (page faults on the 8 MB output), so the large speed-ups are pytest-benchmark's.
The copies at n = 2^20 are paired here, a round being one call of the core and then 2 ms of
`np.copy` of the same losses: two passes over memory of the same size, neither of which leaves
the other cold, where pytest-benchmark times the copy once and the sets minutes later, and a
single copy's time swings with the moment it is taken.

Last, many problems in one call: a 2-D array of `rows` problems of n losses each, one call,
against one call per row of the same array in a Python loop, paired the same way; the time
per row of each, and whether the weights of the two are the same to the last bit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from bench_table import LARGE_COPIES, LARGE_N, SMALL_MICROSECONDS, SMALL_N, SMALL_SPEEDUP, verdict
from problems import CALLS, call, losses

from dro_rebel import baseline, robust_weights

# Each side of a round runs for about this long (at least one call).
ROUND_SECONDS = 2e-3
MIN_ROUNDS = 5

# Many problems per call: the sets of the target, and the target per row of 64 losses.
BATCH_SETS = ("kl radius", "chi2 radius", "cvar alpha", "tv radius", "chi2 penalty", "kl penalty")
BATCH_N, BATCH_MICROSECONDS_PER_ROW = 64, 0.3

# Seconds that `count` calls take: timeit's loop around the statement, as a training loop
# would write the call (no function of the harness between the loop and the call).
Run = Callable[[int], float]


def run_of(statement: str, **names: object) -> Run:
    return timeit.Timer(statement, globals=names).timeit


def calls_per_round(run: Run) -> int:
    """How many calls take about ROUND_SECONDS (after a few to warm up)."""
    run(3)
    count = 1
    while (seconds := run(count)) < ROUND_SECONDS / 10:
        count *= 10
    return max(1, round(count * ROUND_SECONDS / seconds))


def paired(first: Run, second: Run, *, seconds: float) -> List[Tuple[float, float]]:
    """(time of one call of first, time of one call of second) in each round; rounds go on
    for about `seconds` and number at least MIN_ROUNDS."""
    loops = (calls_per_round(first), calls_per_round(second))
    rounds: List[Tuple[float, float]] = []
    elapsed = 0.0
    while len(rounds) < MIN_ROUNDS or elapsed < seconds:
        times = (first(loops[0]), second(loops[1]))
        elapsed += sum(times)
        rounds.append((times[0] / loops[0], times[1] / loops[1]))
    return rounds


def ratios(rounds: List[Tuple[float, float]]) -> List[float]:
    """Per round, the second's time over the first's."""
    return [second / first for first, second in rounds]


def spread(values: List[float]) -> str:
    """median [first quartile, third quartile]."""
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{median:.1f} [{q1:.1f}, {q3:.1f}]"


def row(name: str, n: int, seconds: float) -> str:
    values = losses(n)
    core = run_of(CALLS[name], solve=robust_weights, values=values)
    numpy_baseline = run_of(CALLS[name], solve=baseline.robust_weights, values=values)
    against_baseline = paired(core, numpy_baseline, seconds=seconds)
    speedups = ratios(against_baseline)
    time_of_call = statistics.median(first for first, _ in against_baseline)
    speedup = statistics.median(speedups)
    target = ""
    if n == SMALL_N:
        us = time_of_call * 1e6
        target = (
            f"{SMALL_SPEEDUP:.0f}x: {verdict(speedup >= SMALL_SPEEDUP, f'{speedup:.0f}x')}; "
            f"<{SMALL_MICROSECONDS:.0f} us: {verdict(us < SMALL_MICROSECONDS, f'{us:.2f} us')}"
        )
    return f"{name:<14}{n:>9}{_time(time_of_call):>12}  {spread(speedups):<24}{len(against_baseline):>7}  {target}"


def copies_row(name: str, n: int, seconds: float) -> str:
    values = losses(n)
    core = run_of(CALLS[name], solve=robust_weights, values=values)
    copy = run_of("copy(values)", copy=np.copy, values=values)
    rounds = paired(core, copy, seconds=seconds)
    copies = [1.0 / ratio for ratio in ratios(rounds)]
    time_of_call = statistics.median(first for first, _ in rounds)
    time_of_copy = statistics.median(second for _, second in rounds)
    target = ""
    if n == LARGE_N:
        median = statistics.median(copies)
        target = f"<={LARGE_COPIES:.0f} copies: {verdict(median <= LARGE_COPIES, f'{median:.1f}')}"
    return (
        f"{name:<14}{n:>9}{_time(time_of_call):>12}{_time(time_of_copy):>12}  {spread(copies):<24}"
        f"{len(rounds):>7}  {target}"
    )


def batch_row(name: str, rows: int, n: int, seconds: float) -> str:
    values = losses(rows * n).reshape(rows, n)
    statement = CALLS[name]
    batch = run_of(statement, solve=robust_weights, values=values)
    one_per_row = run_of(
        f"for row in values: {statement.replace('values', 'row')}", solve=robust_weights, values=values
    )
    solve = call(name)
    together = solve(robust_weights, values)
    same = all(np.array_equal(weights, solve(robust_weights, row)) for weights, row in zip(together, values))
    rounds = paired(batch, one_per_row, seconds=seconds)
    per_row = statistics.median(first for first, _ in rounds) / rows
    looped = statistics.median(second for _, second in rounds) / rows
    target = ""
    if n == BATCH_N:
        us = per_row * 1e6
        target = f"<={BATCH_MICROSECONDS_PER_ROW} us a row: {verdict(us <= BATCH_MICROSECONDS_PER_ROW, f'{us:.2f} us')}"
    return (
        f"{'batch ' + name:<20}{f'{rows} x {n}':>12}{_time(per_row):>12}{_time(looped):>12}  "
        f"{spread(ratios(rounds)):<24}{len(rounds):>7}  {'yes' if same else 'NO':<5}{target}"
    )


def _time(seconds: float) -> str:
    return f"{seconds * 1e6:.2f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def table(title: str, header: str, rows: Iterable[str]) -> None:
    """Prints the rows as they are timed, under the title and the header."""
    print(title)
    print(header)
    print("-" * len(header))
    for line in rows:
        print(line, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="benches/paired.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="rounds per set and size, in seconds")
    parser.add_argument("--sizes", type=int, nargs="*", default=[SMALL_N], help="sizes of the speed-ups")
    parser.add_argument("--large-sizes", type=int, nargs="*", default=[LARGE_N], help="sizes of the copies")
    parser.add_argument(
        "--batch", type=int, nargs=2, default=[4096, BATCH_N], metavar=("ROWS", "N"), help="problems per call, and n"
    )
    args = parser.parse_args(argv)
    if args.sizes:
        table(
            "paired rounds: the core, then its comparison straight after; median [quartiles] over rounds",
            f"{'set':<14}{'n':>9}{'core':>12}  {'speed-up':<24}{'rounds':>7}  target",
            (row(name, n, args.seconds) for n in args.sizes for name in CALLS),
        )
    if args.large_sizes:
        print()
        table(
            "paired rounds: one call of the core, then 2 ms of np.copy; the core's time in copies",
            f"{'set':<14}{'n':>9}{'core':>12}{'np.copy':>12}  {'copies':<24}{'rounds':>7}  target",
            (copies_row(name, n, args.seconds) for n in args.large_sizes for name in CALLS),
        )
    if args.batch[0] > 0:
        rows, n = args.batch
        print()
        table(
            "paired rounds: one call on a 2-D array, then one call per row in a loop; time per row",
            f"{'set':<20}{'rows x n':>12}{'2-D call':>12}{'per row':>12}  {'speed-up':<24}{'rounds':>7}  "
            f"{'same':<5}target",
            (batch_row(name, rows, n, args.seconds) for name in BATCH_SETS),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
