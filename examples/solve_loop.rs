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
    let losses = squared_normals(n);
    let mut out = vec![0.0; n];
    let options = Options::new(ambiguity, budget);
    for _ in 0..repetitions {
        solve(black_box(losses.as_slice()), &options, &mut out).expect("a valid problem");
    }
    black_box(&out);
}

/// Squared standard normals from a fixed xorshift stream and the Box-Muller transform, as in
/// benches/core.rs.
fn squared_normals(n: usize) -> Vec<f64> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let z = (-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos();
            z * z
        })
        .collect()
}
