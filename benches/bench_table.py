"""The table of ratios from one run of benches/test_bench_core.py.

    python benches/bench_table.py runs/bench.json

reads pytest-benchmark's JSON (``--benchmark-json``) and prints, per set and n, the median
time of the Rust core and of the numpy baseline, the speed-up, the core's time per call, and at
the largest n the core's time in copies of the input (np.copy, measured in the same run), with
the development targets (docs/performance.md#targets) marked reached or missed. Ratios only mean something inside
one run: every number here comes from the same file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from typing import Optional, Sequence

# The targets: at the smallest n, speed-up and time per call from Python; at the largest,
# speed-up and time in copies of the input.
SMALL_N, SMALL_SPEEDUP, SMALL_MICROSECONDS = 64, 50.0, 5.0
LARGE_N, LARGE_SPEEDUP, LARGE_COPIES = 1_048_576, 10.0, 10.0


def load(path: str) -> dict:
    """{(implementation, set or None, n or None): median seconds a call}, and the matched
    flags. A benchmark whose rounds ran the call several times says how many in
    ``extra_info["calls"]``."""
    with open(path) as handle:
        data = json.load(handle)
    medians: dict = {}
    matched: dict = {}
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        key = (info.get("implementation"), info.get("set"), info.get("n"))
        medians[key] = bench["stats"]["median"] / info.get("calls", 1)
        if "matched" in info:
            matched[key[1:]] = info["matched"]
    return {"medians": medians, "matched": matched, "machine": data.get("machine_info", {})}


def verdict(ok: bool, how_far: str) -> str:
    return "reached" if ok else f"MISSED ({how_far})"


def render(results: dict) -> str:
    medians, matched = results["medians"], results["matched"]
    by_set: dict = defaultdict(dict)
    for (implementation, name, n), seconds in medians.items():
        if name is not None:
            by_set[name][(implementation, n)] = seconds
    noop = medians.get(("no-op call", None, None))
    lines = []
    machine = results["machine"]
    if machine:
        lines.append(
            f"machine: {machine.get('cpu', {}).get('brand_raw', '?')}, python {machine.get('python_version', '?')}"
        )
    if noop is not None:
        lines.append(f"no-op Python call: {noop * 1e9:.0f} ns")
    for n in sorted({n for (_, _, n) in medians if n is not None}):
        copy = medians.get(("np.copy", None, n))
        if copy is not None:
            lines.append(f"np.copy n={n}: {copy * 1e6:.2f} us")
    header = f"{'set':<14}{'n':>9}{'rust':>12}{'baseline':>12}{'speed-up':>10}{'rust/copy':>11}  agree  target"
    lines += ["", header, "-" * len(header)]
    for name in sorted(by_set):
        for n in sorted({n for (_, n) in by_set[name]}):
            rust = by_set[name].get(("rust", n))
            base = by_set[name].get(("baseline", n))
            copy = medians.get(("np.copy", None, n))
            speedup = base / rust if rust and base else None
            copies = rust / copy if rust and copy else None
            target = ""
            if n == SMALL_N and rust is not None and speedup is not None:
                us = rust * 1e6
                target = (
                    f"{SMALL_SPEEDUP:.0f}x: {verdict(speedup >= SMALL_SPEEDUP, f'{speedup:.0f}x')}; "
                    f"<{SMALL_MICROSECONDS:.0f} us: {verdict(us < SMALL_MICROSECONDS, f'{us:.2f} us')}"
                )
            elif n == LARGE_N and speedup is not None and copies is not None:
                target = (
                    f"{LARGE_SPEEDUP:.0f}x: {verdict(speedup >= LARGE_SPEEDUP, f'{speedup:.1f}x')}; "
                    f"<={LARGE_COPIES:.0f} copies: {verdict(copies <= LARGE_COPIES, f'{copies:.1f}')}"
                )
            agree = matched.get((name, n))
            agreement = "yes" if agree else "NO" if agree is not None else "?"
            lines.append(
                f"{name:<14}{n:>9}{_time(rust):>12}{_time(base):>12}"
                f"{_ratio(speedup):>10}{_ratio(copies):>11}  {agreement:<5}  {target}"
            )
    return "\n".join(lines)


def _time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _ratio(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}x"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benches/bench_table.py",
        description="Print the rust-vs-baseline table from pytest-benchmark's JSON output.",
    )
    parser.add_argument("json", help="the file written by pytest --benchmark-json=FILE")
    args = parser.parse_args(argv)
    try:
        results = load(args.json)
    except (OSError, ValueError, KeyError) as exc:
        print(f"cannot read {args.json}: {exc}", file=sys.stderr)
        return 1
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
