//! The one CPU dispatch: which build of the kernels runs, decided once per process.
//!
//! Every kernel has a portable build (baseline x86-64, which assumes SSE2 only, or any other
//! architecture) and, on x86-64, a build for AVX2 and FMA: the same Rust compiled again under
//! `#[target_feature]`, and the kernels written with intrinsics (`avx2.rs`, reachable from here
//! only). Each gives the bits of its portable twin, but for the exponential of the KL passes,
//! which fuses its multiply-adds where FMA is there (`passes::exp_nonpositive`). The AVX2 build
//! runs where the processor has both features, unless a switch forces the portable one:
//!
//! - the environment variable `DRO_REBEL_PORTABLE` set to anything but `0` or nothing, read once,
//!   at the first solve of the process;
//! - the cargo feature `portable`, at build time.
//!
//! CI runs the Rust and the Python tests a second time with the variable set (`.ci/run`), so an
//! AVX2 machine tests both builds end to end.

use std::sync::atomic::{AtomicU8, Ordering};

#[cfg(target_arch = "x86_64")]
pub mod avx2;

/// Proof that the AVX2 build may run: the processor has AVX2 and FMA, and no switch forces the
/// portable build. Only `avx2()` makes one, so a function that takes it may use both features.
#[derive(Clone, Copy, Debug)]
pub struct Avx2(());

const UNKNOWN: u8 = 0;
const PORTABLE: u8 = 1;
const AVX2: u8 = 2;

/// The build chosen, once known.
static CHOICE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// The proof that the AVX2 build runs, or None where the portable one does.
#[inline(always)]
pub fn avx2() -> Option<Avx2> {
    let choice = match CHOICE.load(Ordering::Relaxed) {
        UNKNOWN => {
            // Two threads may both detect: they find the same answer.
            let choice = detect();
            CHOICE.store(choice, Ordering::Relaxed);
            choice
        }
        known => known,
    };
    (choice == AVX2).then_some(Avx2(()))
}

/// "avx2" or "portable": the build the kernels run, for tests and benchmarks to report.
pub fn name() -> &'static str {
    if avx2().is_some() {
        "avx2"
    } else {
        "portable"
    }
}

fn detect() -> u8 {
    if cfg!(feature = "portable") || forced_portable() {
        return PORTABLE;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        return AVX2;
    }
    PORTABLE
}

/// `DRO_REBEL_PORTABLE` is set to something other than `0`.
fn forced_portable() -> bool {
    std::env::var_os("DRO_REBEL_PORTABLE").is_some_and(|value| !value.is_empty() && value != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_forces_the_portable_build() {
        if cfg!(feature = "portable") || forced_portable() {
            assert!(avx2().is_none());
            assert_eq!(name(), "portable");
        }
        #[cfg(target_arch = "x86_64")]
        if !cfg!(feature = "portable") && !forced_portable() && std::is_x86_feature_detected!("avx2") {
            assert!(avx2().is_some());
        }
    }
}
