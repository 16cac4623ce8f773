#!/usr/bin/env bash
# The wheel users get, checked as they get it. First `auditwheel show`: the wheel must meet
# manylinux2014 (glibc 2.17) or an older policy, never a newer one. Then, under each Python
# given, a fresh venv with only numpy and the wheel (no scipy, no torch, not the source tree):
# robust_weights there (a release build, the AVX2 kernels where the processor has them, the
# portable ones under DRO_REBEL_PORTABLE=1), and the command line: --help, --version,
# `weights --help`, `weights` on a .npy file, and the one-line errors of a bad file and of a
# subcommand whose extra is missing.
#
#   AUDITWHEEL=.venv-build/bin/auditwheel bash tests/wheel_check.sh dist PYTHON...
#
# (make wheel-check builds the wheel first and passes every CPython 3.10+ the machine has.)
set -euo pipefail

dist="${1:?usage: tests/wheel_check.sh DIST_DIR [PYTHON...]}"
shift
pythons=("$@")
[ ${#pythons[@]} -gt 0 ] || pythons=(python3)
auditwheel="${AUDITWHEEL:-auditwheel}"
# The newest policy the wheel may meet: manylinux2014 is manylinux_2_17.
max_glibc_minor=17

wheel="$(ls -t "$dist"/dro_rebel-*.whl 2>/dev/null | head -n 1)"
if [ -z "$wheel" ]; then
    echo "wheel_check: no dro_rebel-*.whl in $dist (run make wheel)" >&2
    exit 1
fi
wheel="$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")"
name="$(basename "$wheel")"
echo "wheel_check: $name ($(du -k "$wheel" | cut -f1) KiB)"

fail() {
    echo "wheel_check: FAILED: $*" >&2
    exit 1
}

# -- the policy ------------------------------------------------------------------------------
case "$name" in
    *-cp310-abi3-*) ;;
    *) fail "$name is not a cp310-abi3 wheel" ;;
esac
if [[ "$name" == *linux* ]]; then
    command -v "$auditwheel" >/dev/null || fail "no auditwheel (set AUDITWHEEL, or make wheel-check installs it)"
    report="$("$auditwheel" show "$wheel")"
    echo "$report"
    # auditwheel wraps its lines: read the tag from the report as one line.
    tag="$(echo $report | sed -n 's/.*consistent with the following platform tag: "\([^"]*\)".*/\1/p')"
    [ -n "$tag" ] || fail "auditwheel show names no platform tag"
    glibc_minor="$(echo "$tag" | sed -n 's/^manylinux_2_\([0-9]*\)_.*/\1/p')"
    [ -n "$glibc_minor" ] || fail "auditwheel: $tag is no manylinux policy"
    [ "$glibc_minor" -le "$max_glibc_minor" ] || fail "the wheel needs glibc 2.$glibc_minor ($tag), newer than manylinux2014 (glibc 2.17)"
    [[ "$name" =~ manylinux_2_([0-9]+)_ ]] && [ "${BASH_REMATCH[1]}" -le "$max_glibc_minor" ] \
        || fail "$name is not tagged manylinux2014 (manylinux_2_17) or older"
fi

# -- under each Python -----------------------------------------------------------------------
losses_dir="$(mktemp -d)"
trap 'rm -rf "$losses_dir"' EXIT
for python in "${pythons[@]}"; do
    version="$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
    venv="$losses_dir/venv-$version"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check numpy
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel"
    # Run from an empty folder, so that the source tree's python/ cannot shadow the installed package.
    work="$losses_dir/work-$version"
    mkdir "$work"
    cd "$work"

    "$venv/bin/python" - <<'PY'
import os
import sys

import numpy as np

import dro_rebel
from dro_rebel import _core, robust_weights, worst_case

assert "site-packages" in dro_rebel._core.__file__, dro_rebel._core.__file__
assert dro_rebel.build_profile == "release", dro_rebel.build_profile
losses = np.array([0.3, 2.0, -1.0, 2.5, 0.7])
for ambiguity, size in [
    ("kl", {"radius": 0.2}), ("chi2", {"radius": 0.2}), ("cvar", {"alpha": 0.4}),
    ("tv", {"radius": 0.2}), ("kl", {"penalty": 1.0}), ("chi2", {"penalty": 1.0}),
    ("chi2", {"radius": "calibrated"}),
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
# The kernels dispatched at run time: AVX2 and FMA where the processor has both, unless forced off.
flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
expected = "portable" if os.environ.get("DRO_REBEL_PORTABLE") == "1" or not {"avx2", "fma"} <= set(flags) else "avx2"
if sys.platform == "linux":
    assert _core.kernels() == expected, (_core.kernels(), expected)
big = np.random.default_rng(0).standard_normal(100_000)
np.save("big.npy", big)
np.save("big-weights.npy", robust_weights(big, "kl", radius=0.1))
assert "torch" not in sys.modules and "scipy" not in sys.modules
print(f"  robust_weights: {_core.kernels()} kernels, Python {sys.version.split()[0]}")
PY
    # The portable kernels give the same weights, to rounding.
    DRO_REBEL_PORTABLE=1 "$venv/bin/python" -c '
import numpy as np
from dro_rebel import _core, robust_weights
assert _core.kernels() == "portable", _core.kernels()
np.testing.assert_allclose(robust_weights(np.load("big.npy"), "kl", radius=0.1), np.load("big-weights.npy"), rtol=1e-9, atol=1e-15)
print("  robust_weights: portable kernels agree")'

    # -- the command line, from the bare install ---------------------------------------------
    cli="$venv/bin/dro-rebel"
    "$cli" --help >help.txt || fail "dro-rebel --help"
    grep -q "weights" help.txt || fail "dro-rebel --help lists no weights subcommand"
    "$cli" --version >version.txt || fail "dro-rebel --version"
    grep -Eq "^dro-rebel [0-9][^ ]* \(release build, (avx2|portable) kernels\)$" version.txt \
        || fail "dro-rebel --version printed: $(cat version.txt)"
    for command in weights train demo study "study radius" "study shift"; do
        "$cli" $command --help >/dev/null || fail "dro-rebel $command --help"
    done
    "$venv/bin/python" -c 'import numpy as np; np.save("losses.npy", [0.5, 2.0, 1.0, 3.0])'
    "$cli" weights losses.npy -a kl -r 0.1 -o weights.npy || fail "dro-rebel weights"
    "$cli" weights losses.npy -a chi2 -r calibrated >calibrated.txt || fail "dro-rebel weights -r calibrated"
    "$venv/bin/python" -c '
import numpy as np
from dro_rebel import robust_weights
losses = np.load("losses.npy")
assert np.array_equal(np.load("weights.npy"), robust_weights(losses, "kl", radius=0.1))
assert np.array_equal(np.loadtxt("calibrated.txt"), robust_weights(losses, "chi2", radius="calibrated"))'

    # A failure is one line on stderr, exit status 1, no traceback.
    expect_error() {  # EXPECTED_TEXT COMMAND...
        local expected="$1"
        shift
        local status=0
        "$cli" "$@" >out.txt 2>err.txt || status=$?
        [ "$status" -eq 1 ] || fail "dro-rebel $* exited with $status, not 1: $(cat err.txt)"
        [ "$(wc -l <err.txt)" -eq 1 ] || fail "dro-rebel $* printed more than one line: $(cat err.txt)"
        grep -q "Traceback" err.txt && fail "dro-rebel $* printed a traceback"
        grep -qF "$expected" err.txt || fail "dro-rebel $* did not say '$expected': $(cat err.txt)"
        echo "  $(cat err.txt)"
    }
    expect_error 'dro-rebel study radius: error: needs the study extra (scipy, matplotlib, tqdm not installed): pip install "dro-rebel[study]"' study radius
    expect_error 'dro-rebel demo: error: needs the torch and demo extras (torch, transformers, tokenizers and 14 more not installed): pip install "dro-rebel[torch,demo]"' demo
    expect_error 'dro-rebel train: error: needs the torch extra (torch, transformers, tokenizers and 2 more not installed): pip install "dro-rebel[torch]"' train config.toml
    expect_error 'dro-rebel weights: error: [Errno 2] No such file or directory' weights missing.npy -r 0.1
    cd - >/dev/null
    echo "wheel check passed: $name under Python $version"
done
