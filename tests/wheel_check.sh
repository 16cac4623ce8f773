#!/usr/bin/env bash
# Installs the newest dro_rebel wheel from DIST_DIR into a fresh venv that has only numpy (no
# scipy, no torch, not the source tree) and calls robust_weights there: the check that the wheel
# users get is complete and is a release build.
#
#   bash tests/wheel_check.sh dist        (make wheel-check builds the wheel first)
set -euo pipefail

dist="${1:?usage: tests/wheel_check.sh DIST_DIR}"
python="${PYTHON:-python3}"
wheel="$(ls -t "$dist"/dro_rebel-*.whl 2>/dev/null | head -n 1)"
if [ -z "$wheel" ]; then
    echo "wheel_check: no dro_rebel-*.whl in $dist (run make wheel)" >&2
    exit 1
fi
wheel="$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")"

venv="$(mktemp -d)"
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check numpy
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel"

# Run from the venv, so that the source tree's python/ cannot shadow the installed package.
cd "$venv"
"$venv/bin/python" - "$wheel" <<'PY'
import sys

import numpy as np

import dro_rebel
from dro_rebel import robust_weights, worst_case

assert "site-packages" in dro_rebel._core.__file__, dro_rebel._core.__file__
assert dro_rebel.build_profile == "release", dro_rebel.build_profile
losses = np.array([0.3, 2.0, -1.0, 2.5, 0.7])
for ambiguity, size in [
    ("kl", {"radius": 0.2}), ("chi2", {"radius": 0.2}), ("cvar", {"alpha": 0.4}),
    ("tv", {"radius": 0.2}), ("kl", {"penalty": 1.0}), ("chi2", {"penalty": 1.0}),
]:
    q = robust_weights(losses, ambiguity, **size)
    assert q.shape == losses.shape and abs(q.sum() - 1.0) < 1e-12 and q.min() >= 0, (ambiguity, q)
    assert q[3] == q.max(), (ambiguity, q)
# A list and a reference go through the core's one conversion path.
q = robust_weights(losses, "kl", radius=0.2)
assert np.array_equal(robust_weights(losses.tolist(), "kl", radius=0.2), q)
assert np.array_equal(robust_weights(losses, "kl", radius=0.2, reference=np.ones(5)), q)
# Arguments bind as in Python (PyO3's METH_FASTCALL binding) on every version the wheel serves.
assert np.array_equal(robust_weights(losses=losses, ambiguity="kl", **{"".join(["rad", "ius"]): 0.2}), q)
try:
    robust_weights(losses, "kl", radiu=0.2)
except TypeError as error:
    assert "unexpected keyword argument 'radiu'" in str(error), error
else:
    raise AssertionError("an unknown keyword was accepted")
rows = robust_weights(np.vstack([losses, losses[::-1]]).astype(np.float32), "chi2", radius=0.2)
assert rows.dtype == np.float32 and rows.shape == (2, 5)
assert worst_case(losses, "chi2", radius=0.2).value > losses.mean()
try:
    robust_weights(np.array([1.0, np.nan]), "kl", radius=0.1)
except ValueError as error:
    assert "finite" in str(error)
else:
    raise AssertionError("NaN losses were accepted")
assert "torch" not in sys.modules and "scipy" not in sys.modules
print(
    f"wheel check passed: {sys.argv[1].rsplit('/', 1)[-1]} (dro_rebel {dro_rebel.__version__}, "
    f"{dro_rebel.build_profile}) under Python {sys.version.split()[0]}"
)
PY
