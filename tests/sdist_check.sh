#!/usr/bin/env bash
# The source distribution builds with Rust (cargo on the PATH) and pip alone: in a fresh venv,
# `pip wheel` of the newest dro_rebel-*.tar.gz in DIST_DIR (pip fetches maturin, the build
# backend, from PyPI), then the wheel it built installed with numpy and called.
#
#   bash tests/sdist_check.sh dist [PYTHON]      (make sdist-check builds the sdist first)
set -euo pipefail

dist="${1:?usage: tests/sdist_check.sh DIST_DIR [PYTHON]}"
python="${2:-python3}"
sdist="$(ls -t "$dist"/dro_rebel-*.tar.gz 2>/dev/null | head -n 1)"
if [ -z "$sdist" ]; then
    echo "sdist_check: no dro_rebel-*.tar.gz in $dist (run make sdist)" >&2
    exit 1
fi
sdist="$(cd "$(dirname "$sdist")" && pwd)/$(basename "$sdist")"
echo "sdist_check: $(basename "$sdist") ($(du -k "$sdist" | cut -f1) KiB, $(tar -tzf "$sdist" | wc -l) files)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m venv "$work/venv"
cd "$work"
"$work/venv/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir wheels "$sdist"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check numpy wheels/dro_rebel-*.whl
"$work/venv/bin/python" -c '
import sys
import numpy as np
import dro_rebel
from dro_rebel import robust_weights
assert "site-packages" in dro_rebel._core.__file__, dro_rebel._core.__file__
q = robust_weights(np.array([0.3, 2.0, -1.0, 2.5, 0.7]), "chi2", radius=0.2)
assert abs(q.sum() - 1) < 1e-12 and q.argmax() == 3, q
print(f"sdist check passed: built {dro_rebel.__version__} ({dro_rebel.build_profile}) under Python {sys.version.split()[0]}")'
"$work/venv/bin/dro-rebel" --version
