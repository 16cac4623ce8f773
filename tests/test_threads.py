"""Many Python threads calling robust_weights at once get the same answers as serial calls:
the core keeps no shared state, and large solves run with the GIL released (so they do
overlap), including 2-D batches that the core itself splits over its own threads."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dro_rebel import robust_weights

SETS = [
    ("kl", {"radius": 0.3}),
    ("chi2", {"radius": 0.3}),
    ("cvar", {"alpha": 0.2}),
    ("tv", {"radius": 0.2}),
    ("kl", {"penalty": 0.5}),
    ("chi2", {"penalty": 0.5}),
]


def make_jobs():
    rng = np.random.default_rng(11)
    jobs = []
    for k in range(240):
        ambiguity, size = SETS[k % len(SETS)]
        shape = [(8,), (64,), (1000,), (5000,), (20000,), (40, 2000)][k % 6]
        losses = rng.gamma(2.0, size=shape)
        if k % 4 == 0:
            losses = losses.astype(np.float32)
        reference = rng.random(shape[-1]) if k % 3 == 0 else None
        groups = rng.integers(0, 9, shape[-1]) if k % 5 == 0 else None
        jobs.append((losses, ambiguity, dict(size, reference=reference, groups=groups)))
    return jobs


def solve(job):
    losses, ambiguity, keywords = job
    return robust_weights(losses, ambiguity, **keywords)


def test_threads_get_the_serial_answers():
    jobs = make_jobs()
    serial = [solve(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(2):
            parallel = list(pool.map(solve, jobs))
            for expected, got in zip(serial, parallel):
                assert got.dtype == expected.dtype
                np.testing.assert_array_equal(got, expected)


def test_threads_sharing_one_input_array():
    losses = np.random.default_rng(12).normal(size=50_000)
    losses.flags.writeable = False
    expected = robust_weights(losses, "chi2", radius=0.5)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: robust_weights(losses, "chi2", radius=0.5), range(64)))
    for got in results:
        np.testing.assert_array_equal(got, expected)


DIGESTS = """
import hashlib, numpy as np
from dro_rebel import robust_weights
losses = np.random.default_rng(13).gamma(2.0, size=300_001)
for ambiguity, size in {sets!r}:
    print(hashlib.sha256(robust_weights(losses, ambiguity, **size).tobytes()).hexdigest())
"""


def test_answers_do_not_depend_on_the_number_of_threads():
    # The core's passes split large batches into chunks fixed by their length alone, so the
    # weights are the same to the last bit on a machine with any number of cores.
    def digests(threads):
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        script = DIGESTS.format(sets=SETS)
        return subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        ).stdout

    one = digests(1)
    assert len(one.split()) == len(SETS)
    assert digests(3) == one
