//! One problem solved many times, for counting instructions with callgrind (a figure that does
//! not drift with the load on a shared machine, unlike a time):
//!
//!     cargo build --release --example solve_loop
//!     valgrind --tool=callgrind target/release/examples/solve_loop kl-radius 64 20000
//!
//! Sets as in benches/core.rs: kl-radius, chi2-radius, cvar-alpha, tv-radius, chi2-penalty,
//! kl-penalty; the losses are the same squared normals. Divide the total by the repetitions.
//! With a fourth argument ROWS, each repetition solves ROWS problems of N losses in one call
//! (`solve_rows`), and the time per row of that and of one `solve` per row is printed.

use std::hint::black_box;

use std::time::Instant;

use _core::{solve, solve_rows, Ambiguity, Budget, Options};

#[path = "../../benches/common/mod.rs"]
mod common;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: solve_loop SET N REPETITIONS [ROWS] (SET: kl-radius, chi2-radius, cvar-alpha, tv-radius, chi2-penalty, kl-penalty)";
    let (set, n, repetitions, rows) = match args.as_slice() {
        [_, set, n, repetitions] => (set, n, repetitions, None),
        [_, set, n, repetitions, rows] => (set, n, repetitions, Some(rows)),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let Some(rows) = rows.map_or(Some(1), |r| r.parse::<usize>().ok()) else {
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
    let losses = common::losses(n * rows);
    let mut out = vec![0.0; n * rows];
    let options = Options::new(ambiguity, budget);
    if rows == 1 {
        for _ in 0..repetitions {
            solve(black_box(losses.as_slice()), &options, &mut out).expect("a valid problem");
        }
        black_box(&out);
        return;
    }
    let per_row = |start: Instant| start.elapsed().as_secs_f64() * 1e6 / (repetitions * rows) as f64;
    let start = Instant::now();
    for _ in 0..repetitions {
        solve_rows(black_box(losses.as_slice()), n, &options, &mut out).expect("valid problems");
    }
    let together = per_row(start);
    let start = Instant::now();
    for _ in 0..repetitions {
        for (row, o) in losses.chunks(n).zip(out.chunks_mut(n)) {
            solve(black_box(row), &options, o).expect("a valid problem");
        }
    }
    let one_by_one = per_row(start);
    let start = Instant::now();
    for _ in 0..repetitions {
        solve_rows(black_box(losses.as_slice()), n, &options, &mut out).expect("valid problems");
    }
    let together = together.min(per_row(start));
    println!("{set} {rows} x {n}: solve_rows {together:.3} us a row, solve per row {one_by_one:.3} us");
}
