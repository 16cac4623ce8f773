//! When a second thread starts on work handed to it while the first is busy, for reading the
//! speed-up of `solve_rows` on two cores (docs/performance.md#many-problems-per-call): on a
//! virtual machine the second core may be asleep, and waking it can take as long as the call.
//!
//!     cargo run --release --example thread_start
//!
//! Each call shares 64 jobs of 30 us between the calling thread and one helper (a rayon pool
//! thread, as `solve_rows` uses, then a fresh `std::thread`, for comparison), and records when
//! the helper took its first job, or that it took none before the caller had done them all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const JOBS: usize = 64;
const CALLS: usize = 40;

fn busy(length: Duration) {
    let start = Instant::now();
    while start.elapsed() < length {}
}

/// Microseconds from the call's start to the helper's first job; None if it took none.
fn one_call(spawn_helper: impl FnOnce(&(dyn Fn() + Sync), &dyn Fn())) -> Option<u128> {
    let start = Instant::now();
    let next = AtomicUsize::new(0);
    let helper_started = AtomicUsize::new(usize::MAX);
    let work = |helper: bool| loop {
        if next.fetch_add(1, Ordering::Relaxed) >= JOBS {
            return;
        }
        if helper {
            helper_started.fetch_min(start.elapsed().as_micros() as usize, Ordering::Relaxed);
        }
        busy(Duration::from_micros(30));
    };
    spawn_helper(&|| work(true), &|| work(false));
    let started = helper_started.load(Ordering::Relaxed);
    (started != usize::MAX).then_some(started as u128)
}

fn report(name: &str, starts: &[Option<u128>]) {
    let mut late: Vec<u128> = starts.iter().flatten().copied().collect();
    late.sort_unstable();
    let never = starts.iter().filter(|s| s.is_none()).count();
    let within_100 = late.iter().filter(|&&us| us <= 100).count();
    let median = late.get(late.len() / 2).map_or("-".to_string(), |us| format!("{us} us"));
    println!(
        "{name:<12} {CALLS} calls of {JOBS} x 30 us: helper started within 100 us in {within_100}, later in {}, \
         never in {never}; median start {median}",
        late.len() - within_100
    );
}

fn main() {
    let rayon: Vec<_> = (0..CALLS)
        .map(|_| {
            one_call(|helper, caller| {
                rayon::in_place_scope(|scope| {
                    scope.spawn(|_| helper());
                    caller();
                })
            })
        })
        .collect();
    report("rayon", &rayon);
    let threads: Vec<_> = (0..CALLS)
        .map(|_| {
            one_call(|helper, caller| {
                std::thread::scope(|scope| {
                    scope.spawn(helper);
                    caller();
                })
            })
        })
        .collect();
    report("std::thread", &threads);
}
