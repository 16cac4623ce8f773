//! Jobs shared by the calling thread and the thread pool, for a call that is parallel but short
//! (many small problems in one call: about a millisecond).
//!
//! Through rayon's own parallel iterators a thread outside the pool (Python's, for one) hands
//! the work over and sleeps until the pool wakes it: two wake-ups of a sleeping thread a call,
//! which on a virtual machine cost about as much as a tenth of the call. Here the caller takes
//! jobs too, from one counter shared with the pool's threads: it starts at once, a pool thread
//! that wakes late takes fewer jobs, and by the time the caller runs out of jobs the others are
//! finishing their last one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Runs job(0), ..., job(jobs - 1) on the calling thread and the pool's other threads, each job
/// once, in no fixed order. Returns the error of the lowest job that failed, the one a serial
/// loop would stop at: jobs are taken in increasing order, so every job below a failed one
/// has been taken and runs to its end, while the jobs above it that are not yet taken are
/// skipped.
pub(crate) fn run<E: Send>(jobs: usize, job: &(impl Fn(usize) -> Result<(), E> + Sync)) -> Result<(), E> {
    let next = AtomicUsize::new(0);
    let lowest_failed = AtomicUsize::new(usize::MAX);
    let failure: Mutex<Option<(usize, E)>> = Mutex::new(None);
    let work = || loop {
        let j = next.fetch_add(1, Ordering::Relaxed);
        if j >= jobs || j > lowest_failed.load(Ordering::Relaxed) {
            return;
        }
        if let Err(error) = job(j) {
            lowest_failed.fetch_min(j, Ordering::Relaxed);
            // A poisoned lock only means another job panicked: that panic reaches the caller.
            let mut failure = failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if !matches!(*failure, Some((k, _)) if k < j) {
                *failure = Some((j, error));
            }
        }
    };
    // One thread a core: the caller and the pool's threads but one.
    let helpers = rayon::current_num_threads().saturating_sub(1).min(jobs.saturating_sub(1));
    rayon::in_place_scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(|_| work());
        }
        work();
    });
    match failure.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()) {
        Some((_, error)) => Err(error),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::run;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_job_runs_once() {
        for threads in [1, 2, 5] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for jobs in [1, 2, 3, 64, 1000] {
                let runs: Vec<AtomicUsize> = (0..jobs).map(|_| AtomicUsize::new(0)).collect();
                let done = pool.install(|| {
                    run(jobs, &|j| {
                        runs[j].fetch_add(1, Ordering::Relaxed);
                        Ok::<(), ()>(())
                    })
                });
                assert_eq!(done, Ok(()));
                assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1), "{threads} threads, {jobs} jobs");
            }
        }
    }

    /// The error is the lowest failing job's, as a serial loop's would be, however the jobs
    /// fall on the threads.
    #[test]
    fn the_lowest_failing_job_is_the_error() {
        for threads in [1, 2, 4] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for _ in 0..50 {
                let failed = pool.install(|| run(200, &|j| if j % 37 == 36 { Err(j) } else { Ok(()) }));
                assert_eq!(failed, Err(36), "{threads} threads");
            }
        }
    }
}
