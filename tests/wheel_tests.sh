#!/usr/bin/env bash
# The tests that need no extra (tests/*.py: numpy, plus the test tools pytest and hypothesis and
# scipy's reference solvers), run against the wheel in DIST_DIR installed into a fresh venv, not
# against the source tree. The release workflow runs it on every platform it builds for: the
# AVX2 kernels must run on x86_64 processors that have AVX2 and FMA, the portable ones
# everywhere else; on x86_64 the tests run a second time with the portable kernels forced.
#
#   bash tests/wheel_tests.sh dist [PYTHON]
set -euo pipefail

dist="${1:?usage: tests/wheel_tests.sh DIST_DIR [PYTHON]}"
python="${2:-python3}"
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$(mktemp -d)/venv"
"$python" -m venv "$venv"
bin="$venv/bin"
[ -d "$venv/Scripts" ] && bin="$venv/Scripts"  # Windows
# The wheel from DIST_DIR, never from an index; then its dependencies and the test tools.
"$bin/python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --find-links "$dist" dro-rebel
"$bin/python" -m pip install --quiet --disable-pip-version-check dro-rebel pytest hypothesis scipy

cd "$root"
machine="$("$bin/python" -c 'import platform; print(platform.machine().lower())')"
kernels="$("$bin/python" -c 'from dro_rebel import _core; print(_core.kernels())')"
echo "wheel_tests: $machine, $kernels kernels, $("$bin/python" -V)"
case "$machine" in
    x86_64 | amd64) ;;
    *) [ "$kernels" = portable ] || { echo "wheel_tests: $kernels kernels on $machine" >&2; exit 1; } ;;
esac
# tests/ imports dro_rebel from the venv: the source tree's python/ is not on the path. The
# importlib mode keeps tests/ itself off the path too, where tests/torch would pass for torch,
# which these tests import only where it is installed.
run_tests() {
    "$bin/python" -m pytest -q -p no:cacheprovider --import-mode=importlib tests --ignore=tests/torch --ignore=tests/demo
}
run_tests
if [ "$kernels" = avx2 ]; then
    DRO_REBEL_PORTABLE=1 run_tests
fi
