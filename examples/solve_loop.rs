//! One problem solved many times, for counting instructions with callgrind (a figure that does
//! not drift with the load on a shared machine, unlike a time):
//!
//!     cargo build --release --example solve_loop
//!     valgrind --tool=callgrind target/release/examples/solve_loop kl-radius 64 20000
//!
//! Sets as in benches/core.rs: kl-radius, chi2-radius, cvar-alpha, tv-radius, chi2-penalty,
//! kl-penalty; the losses are the same squared normals. Divide the total by the repetitions.

use std::hint::black_box;

use _core::{solve, Ambiguity, Budget, Options};

#[path = "../benches/common/mod.rs"]
mod common;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: solve_loop SET N REPETITIONS (SET: kl-radius, chi2-radius, cvar-alpha, tv-radius, chi2-penalty, kl-penalty)";
    let [_, set, n, repetitions] = args.as_slice() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let (ambiguity, budget) = match set.as_str() {
        "kl-radius" => (Ambiguity::Kl, Budget::Radius(0.1)),
        "chi2-radius" => (Ambiguity::Chi2, Budget::Radius(0.5)),
        "cvar-alpha" => (Ambiguity::Cvar, Budget::Alpha(0.1)),
        "tv-radius" => (Ambiguity::Tv, Budget::Radius(0.1)),
        "chi2-penalty" => (Ambiguity::Chi2, Budget::Penalty(1.0)),
        "kl-penalty" => (Ambiguity::Kl, Budget::Penalty(1.0)),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let (Ok(n), Ok(repetitions)) = (n.parse::<usize>(), repetitions.parse::<usize>()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let losses = common::losses(n);
    let mut out = vec![0.0; n];
    let options = Options::new(ambiguity, budget);
    for _ in 0..repetitions {
        solve(black_box(losses.as_slice()), &options, &mut out).expect("a valid problem");
    }
    black_box(&out);
}
