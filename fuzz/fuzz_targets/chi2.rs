//! The chi2 solver on arbitrary losses, references and budgets: see src/lib.rs for the invariants.
#![no_main]

use _core::Ambiguity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_checks::check(data, &[Ambiguity::Chi2], false));
