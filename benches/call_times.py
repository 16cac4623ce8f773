"""The time of one call of ``robust_weights`` from Python at n = 64, per set, for a numpy array
and for CPU torch tensors: what a training loop pays per call.

    .venv/bin/python benches/call_times.py [--seconds 1.0] [--n 64]

Rounds of about 2 ms of calls in ``timeit``'s loop, the statement written as a training loop
writes it; the median time per call over the rounds, quartiles in brackets. Timings of two
builds (two versions of the extension) mean something only side by side on one machine at one
time: run this under each in turn, several times, alternating.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from typing import List, Optional, Sequence

from problems import CALLS, losses

import dro_rebel
from dro_rebel import robust_weights

ROUND_SECONDS = 2e-3


def per_call(statement: str, seconds: float, **names: object) -> List[float]:
    """Seconds per call in each round of about ROUND_SECONDS, rounds for about `seconds`."""
    run = timeit.Timer(statement, globals=names).timeit
    run(10)
    count = 1
    while (elapsed := run(count)) < ROUND_SECONDS / 10:
        count *= 10
    count = max(1, round(count * ROUND_SECONDS / elapsed))
    times: List[float] = []
    while len(times) < 5 or sum(times) * count < seconds:
        times.append(run(count) / count)
    return times


def spread(times: List[float]) -> str:
    q1, median, q3 = statistics.quantiles([t * 1e6 for t in times], n=4, method="inclusive")
    return f"{median:.3f} us [{q1:.3f}, {q3:.3f}]"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="benches/call_times.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="rounds per line, in seconds")
    parser.add_argument("--n", type=int, default=64, help="losses per call")
    args = parser.parse_args(argv)
    if dro_rebel.build_profile != "release":
        print(f"dro_rebel._core is a {dro_rebel.build_profile} build: time a release build", file=sys.stderr)
        return 1
    values = losses(args.n).copy()
    print(f"robust_weights from Python, n = {args.n}: median per call [quartiles] ({dro_rebel._core.__file__})")
    for name, statement in CALLS.items():
        print(f"{'numpy ' + name:<28}{spread(per_call(statement, args.seconds, solve=robust_weights, values=values))}")
    try:
        import torch
    except ImportError:
        print("torch is not installed: no tensor lines")
        return 0
    for dtype in (torch.float32, torch.float64):
        tensor = torch.from_numpy(values).to(dtype)
        for name in ("chi2 radius", "kl radius"):
            label = f"torch {str(dtype).removeprefix('torch.')} {name}"
            print(f"{label:<28}{spread(per_call(CALLS[name], args.seconds, solve=robust_weights, values=tensor))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
