"""The two builds of the kernels (rust/kernels/cpu.rs): AVX2 and FMA where the processor has
them, the portable build where it does not or where DRO_REBEL_PORTABLE forces it. Both give the
same weights; to the last bit but for the KL sets, whose exponential fuses its multiply-adds on
AVX2."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from dro_rebel import _core

FORCED = os.environ.get("DRO_REBEL_PORTABLE", "") not in ("", "0")

# Weights of every set on float64 and float32 losses, small and large (the large ones run the
# parallel passes, the histograms and the binned start), printed as hex floats.
SCRIPT = r"""
import numpy as np
from dro_rebel import _core, robust_weights
rng = np.random.default_rng(7)
calls = [("chi2", {"radius": 0.5}), ("chi2", {"penalty": 1.0}), ("cvar", {"alpha": 0.1}), ("tv", {"radius": 0.1}),
         ("kl", {"radius": 0.1}), ("kl", {"penalty": 1.0})]
print(_core.kernels())
for n in (7, 64, 5000, 300_000):
    x = rng.standard_normal(n) ** 2
    for losses in (x, x.astype(np.float32), np.stack([x[: n // 2 * 2][::2], x[: n // 2 * 2][1::2]])):
        for name, size in calls:
            q = robust_weights(losses, name, **size).astype(np.float64).ravel()
            print(name, n, losses.dtype, " ".join(v.hex() for v in q[:: max(1, q.size // 50)]))
"""


def run(portable: bool) -> list:
    env = {**os.environ, "DRO_REBEL_PORTABLE": "1" if portable else "0"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_the_switch_is_read_by_the_extension():
    if FORCED:
        assert _core.kernels() == "portable"
    assert run(portable=True)[0] == "portable"


def test_both_builds_give_the_same_weights():
    wide, portable = run(portable=False), run(portable=True)
    if wide[0] == "portable":
        pytest.skip("this processor has no AVX2 and FMA: only the portable build runs")
    assert len(wide) == len(portable)
    for a, b in zip(wide[1:], portable[1:]):
        name = a.split()[0]
        if name == "kl":
            got = np.array([float.fromhex(v) for v in a.split()[3:]])
            want = np.array([float.fromhex(v) for v in b.split()[3:]])
            rtol = 1e-6 if a.split()[2] == "float32" else 1e-9
            np.testing.assert_allclose(got, want, rtol=rtol, atol=0, err_msg=a[:40])
        else:
            assert a == b
