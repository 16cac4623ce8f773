#!/usr/bin/env bash
# `make fuzz`: a bounded libFuzzer run of every solver's fuzz target (fuzz/fuzz_targets/),
# starting from the committed corpus (fuzz/corpus/<target>/, read only: new inputs go to
# fuzz/target/corpus/<target>/). Exits non-zero if any target crashed, i.e. panicked or broke
# an invariant of docs/method.md#invariants (fuzz/src/lib.rs); the failing input is saved under
# fuzz/artifacts/<target>/ and the command to reproduce it is printed.
#
#   FUZZ_SECONDS=30     seconds per target
#   FUZZ_TARGETS="..."  which targets (default: all of them)
#
# Toolchain: only the stable toolchain exists on our machines. cargo fuzz's coverage
# instrumentation (-Cpasses=sancov-module and LLVM options) is stable; only the sanitizers
# need nightly (-Zsanitizer), so we run with `--sanitizer none`: the core is safe Rust, where
# AddressSanitizer would find little that bounds checks do not. RUSTC_BOOTSTRAP is not needed.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-30}
targets=${FUZZ_TARGETS:-"kl chi2 cvar tv wasserstein groups"}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi

# Debug assertions on (-a): integer overflow panics instead of wrapping into a wrong answer.
echo "== building the fuzz targets"
cargo fuzz build --sanitizer none -a

failed=()
summary=()
for target in $targets; do
    echo "== fuzzing $target for ${seconds}s"
    work=target/corpus/$target
    log=target/fuzz-$target.log
    mkdir -p "$work" "corpus/$target"
    # -timeout: one input taking seconds is a hang worth reporting; -max_len fits 300 losses.
    if cargo fuzz run --sanitizer none -a "$target" "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$target")
        tail -n 60 "$log"
    fi
    runs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -n 1 || true)
    [ -n "$runs" ] || runs=$(grep -o 'number_of_executed_units: [0-9]*' "$log" | tail -n 1 || true)
    summary+=("$target: $status (${runs:-no final stats, see fuzz/$log})")
done

echo "== summary"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
    echo "crashed: ${failed[*]} (inputs under fuzz/artifacts/, logs under fuzz/target/)" >&2
    exit 1
fi
