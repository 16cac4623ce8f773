"""N calls of ``robust_weights`` on one loss, for counting the instructions of the Python call
path with callgrind (repeatable on a shared machine, unlike a time):

    export PYTHONHASHSEED=0
    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python benches/call_loop.py 20000
    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python benches/call_loop.py 100000

The difference of the two totals over 80,000 is the cost of one call (a fixed hash seed and
two non-zero counts keep one-off costs out of it).
"""

import sys

import numpy as np

from dro_rebel import robust_weights


def main() -> None:
    calls = int(sys.argv[1])
    one = np.array([1.0])
    for _ in range(calls):
        robust_weights(one, "kl", penalty=1.0)


if __name__ == "__main__":
    main()
