"""N calls of ``_core.weights`` on one loss, for counting the instructions of the Python call
path with callgrind (repeatable on a shared machine, unlike a time):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python benches/call_loop.py 20000
    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python benches/call_loop.py 40000

The difference of the two totals over 20,000 is the cost of one call.
"""

import sys

import numpy as np

from dro_rebel import _core


def main() -> None:
    calls = int(sys.argv[1])
    one = np.array([1.0])
    weights = _core.weights
    for _ in range(calls):
        weights(one, "kl", None, 1.0, None, None, None, None, 1.0, None, None)


if __name__ == "__main__":
    main()
