//! Every set over groups (arbitrary labels, sparse and negative ones too): the group-level
//! solve and the expansion back to samples keep the invariants of src/lib.rs.
#![no_main]

use _core::Ambiguity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_checks::check(
    data,
    &[Ambiguity::Kl, Ambiguity::Chi2, Ambiguity::Cvar, Ambiguity::Tv],
    true
));
