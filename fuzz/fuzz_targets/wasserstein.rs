//! The Wasserstein solver on arbitrary losses, references, budgets, types p and ground costs
//! (features, a line metric, raw non-metric costs): see src/lib.rs for the invariants, and
//! `Checker::transport` for the plan's.
#![no_main]

use _core::Ambiguity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_checks::check(data, &[Ambiguity::Wasserstein], false));
