//! The passes of a KL radius solve at 2^20 losses, one at a time: where the time of a large
//! solve goes. Without arguments, the best of 30 timings of each pass; with a pass and a count,
//! that pass only, repeated, for counting its instructions with callgrind (subtract a run of
//! fewer repetitions to cancel the set-up):
//!
//!     cargo build --release --features internals --example pass_times
//!     RAYON_NUM_THREADS=1 target/release/examples/pass_times
//!     RAYON_NUM_THREADS=1 valgrind --tool=callgrind target/release/examples/pass_times histogram 12
//!
//! Passes: copy (the floor: one read and one write), extremes (validation), histogram (the
//! binned start, with its small solve), exp (the tilt and its four moments), normalise, and
//! solve (the whole KL radius solve on the validated batch). The losses are those of
//! benches/core.rs.

use std::hint::black_box;
use std::time::Instant;

use _core::internals::{binned, kl, passes, Batch, Reference};

#[path = "../../benches/common/mod.rs"]
mod common;

const PASSES: [&str; 6] = ["copy", "extremes", "histogram", "exp", "normalise", "solve"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let only = match args.as_slice() {
        [_] => None,
        [_, pass, count] if PASSES.contains(&pass.as_str()) && count.parse::<usize>().is_ok() => {
            Some((pass.as_str(), count.parse::<usize>().unwrap_or(0)))
        }
        _ => {
            eprintln!("usage: pass_times [PASS COUNT] (PASS: {})", PASSES.join(", "));
            std::process::exit(2);
        }
    };
    let n = 1 << 20;
    let losses = common::losses(n);
    let reference = Reference::uniform(n);
    let batch = Batch::new(&losses[..], reference).expect("finite losses");
    let scale = batch.scale();
    let mut out = vec![0.0; n];
    let radius = 0.1;
    for pass in PASSES {
        let mut run = || match pass {
            "copy" => drop(black_box(losses.clone())),
            "extremes" => _ = black_box(passes::extremes(&losses, &reference)),
            "histogram" => {
                _ = black_box(binned::binned_dual(&batch, &scale, |b, q| kl::solve_radius(b, radius, 1e-12, q)))
            }
            "exp" => {
                _ = black_box(passes::write_exp(
                    &losses,
                    &reference,
                    &mut out,
                    (|l| scale.u(l), 3.0),
                    |e, p| p * e,
                    |u, w| [w, w * u, w * u * u, w * u * u * u],
                ))
            }
            // Normalising by 1 leaves the weights as they are from one repetition to the next.
            "normalise" => _ = black_box(passes::normalise(&losses, &mut out, 1.0)),
            _ => _ = black_box(kl::solve_radius(&batch, radius, 1e-12, &mut out)),
        };
        match only {
            Some((chosen, count)) if chosen == pass => (0..count).for_each(|_| run()),
            Some(_) => {}
            None => {
                let best = (0..30)
                    .map(|_| {
                        let start = Instant::now();
                        run();
                        start.elapsed().as_secs_f64()
                    })
                    .fold(f64::INFINITY, f64::min);
                println!("{pass:<10} {:8.3} ms", best * 1e3);
            }
        }
    }
}
