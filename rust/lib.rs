//! dro-rebel's numeric core: the worst-case sample weights of distributionally robust
//! optimisation over a minibatch (docs/method.md), for the KL, chi-square, CVaR, TV and
//! type-p Wasserstein ambiguity sets, constrained (a radius) or penalised (a fixed dual
//! variable), with any reference distribution and over groups.
//!
//! Layout: `sets/` the mathematics, one file per ambiguity set (and groups), each opening with
//! its equations and a link to docs/method.md; `kernels/` the machinery they share (the
//! validated batch, the passes over the losses, the weighted selection, the binned warm start,
//! the float trait); `python/` the bindings, the only code that knows PyO3, behind the `python`
//! feature. This file: the problem's options and the dispatch to a set, one row or many.

pub mod calibrated;
pub mod error;
pub(crate) mod kernels;
pub(crate) mod sets;

#[cfg(test)]
mod testing;

#[cfg(feature = "python")]
mod python;

use std::sync::Mutex;

pub use error::{CoreError, Result};
pub use kernels::real::Real;
pub use sets::wasserstein::{Geometry, Plan};

use kernels::batch::{Batch, Reference};
use sets::{chi2, cvar, groups, kl, tv, wasserstein};

/// The machinery under the sets, for the examples that time it one pass at a time
/// (`--features internals`); no part of the API.
#[cfg(feature = "internals")]
pub mod internals {
    pub use crate::kernels::batch::{Batch, Reference, Scale};
    pub use crate::kernels::{binned, passes};
    pub use crate::sets::kl;
}

/// "release" or "debug": benchmarks refuse a debug build.
pub const BUILD_PROFILE: &str = if cfg!(debug_assertions) { "debug" } else { "release" };

/// The build of the kernels this process runs: "avx2" (AVX2 and FMA) or "portable"
/// (rust/kernels/cpu.rs; `DRO_REBEL_PORTABLE=1` or the `portable` feature force the latter).
pub fn kernels() -> &'static str {
    kernels::cpu::name()
}

/// Default tolerance of the iterative solves (relative).
pub const DEFAULT_TOL: f64 = 1e-12;

/// Below this many losses in all, rows are solved one after another: threads cost more.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// Losses per job of a parallel `solve_rows` (whole rows, at least one).
const ROWS_JOB_ELEMENTS: usize = 1 << 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ambiguity {
    Kl,
    Chi2,
    Cvar,
    Tv,
    Wasserstein,
}

impl Ambiguity {
    /// The name the set goes by in the API: "kl", "chi2", "cvar", "tv", "wasserstein".
    pub fn name(self) -> &'static str {
        match self {
            Ambiguity::Kl => "kl",
            Ambiguity::Chi2 => "chi2",
            Ambiguity::Cvar => "cvar",
            Ambiguity::Tv => "tv",
            Ambiguity::Wasserstein => "wasserstein",
        }
    }
}

impl std::str::FromStr for Ambiguity {
    type Err = CoreError;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "kl" => Ok(Ambiguity::Kl),
            "chi2" => Ok(Ambiguity::Chi2),
            "cvar" => Ok(Ambiguity::Cvar),
            "tv" => Ok(Ambiguity::Tv),
            "wasserstein" => Ok(Ambiguity::Wasserstein),
            other => Err(CoreError::Ambiguity(format!(
                "unknown ambiguity set {other:?}: choose one of \"kl\", \"chi2\", \"cvar\", \"tv\", \"wasserstein\""
            ))),
        }
    }
}

/// The size of the ambiguity set: a radius (constrained form), a fixed dual variable
/// (penalised form) or the CVaR level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    Radius(f64),
    Penalty(f64),
    Alpha(f64),
}

impl Budget {
    /// Checks that exactly the arguments the set takes are given, and that they are in range.
    pub fn new(set: Ambiguity, radius: Option<f64>, penalty: Option<f64>, alpha: Option<f64>) -> Result<Self> {
        let name = set.name();
        let budget = match (set, radius, penalty, alpha) {
            (Ambiguity::Cvar, None, None, Some(a)) => Budget::Alpha(a),
            (Ambiguity::Cvar, _, _, None) => return Err(CoreError::Budget("cvar needs alpha in (0, 1]".into())),
            (Ambiguity::Cvar, _, _, Some(_)) => {
                return Err(CoreError::Budget("cvar takes alpha only, not radius or penalty".into()))
            }
            (_, _, _, Some(_)) => {
                return Err(CoreError::Budget(format!("alpha is for cvar only; {name} takes radius")))
            }
            (Ambiguity::Tv, _, Some(_), _) => {
                return Err(CoreError::Budget("tv has no penalised form: give radius".into()))
            }
            (_, Some(r), None, None) => Budget::Radius(r),
            (_, None, Some(l), None) => Budget::Penalty(l),
            (_, Some(_), Some(_), _) => {
                return Err(CoreError::Budget("give exactly one of radius and penalty, not both".into()))
            }
            (_, None, None, None) => {
                return Err(CoreError::Budget(format!(
                    "{name} needs a radius (constrained form){}",
                    if set == Ambiguity::Tv { "" } else { " or a penalty (penalised form)" }
                )))
            }
        };
        match budget {
            Budget::Radius(r) if r.is_nan() || r < 0.0 => {
                Err(CoreError::Budget(format!("radius must be non-negative, got {r}")))
            }
            Budget::Penalty(l) if l.is_nan() || l <= 0.0 => {
                Err(CoreError::Budget(format!("penalty must be positive, got {l}")))
            }
            Budget::Alpha(a) if !(a > 0.0 && a <= 1.0) => {
                Err(CoreError::Budget(format!("alpha must be in (0, 1], got {a}")))
            }
            ok => Ok(ok),
        }
    }
}

/// Everything about one problem but its losses.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a> {
    pub ambiguity: Ambiguity,
    pub budget: Budget,
    /// Non-negative weights (normalised by the solver); uniform when None.
    pub reference: Option<&'a [f64]>,
    /// Non-negative integer labels: the set then applies to the mixture over groups.
    pub groups: Option<&'a [i64]>,
    pub tol: f64,
    /// Wasserstein only: the ground metric between samples.
    pub geometry: Option<Geometry<'a>>,
    /// Wasserstein only: the type p (the cost is d_ij^p).
    pub order: f64,
}

impl<'a> Options<'a> {
    pub fn new(ambiguity: Ambiguity, budget: Budget) -> Self {
        Options { ambiguity, budget, reference: None, groups: None, tol: DEFAULT_TOL, geometry: None, order: 1.0 }
    }
}

/// What a set's solver returns besides the weights it wrote.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// sum_i q_i l_i.
    pub value: f64,
    /// tau (kl), eta (chi2, cvar), lam (wasserstein); None for tv.
    pub dual: Option<f64>,
    pub iterations: u32,
}

/// The solution of one problem.
#[derive(Clone, Debug, PartialEq)]
pub struct Solution {
    pub value: f64,
    pub dual: Option<f64>,
    pub iterations: u32,
    /// The radius (alpha for cvar) as used; None for the penalised form.
    pub radius: Option<f64>,
    /// Wasserstein only: the transport plan from p to q.
    pub plan: Option<Plan>,
}

/// Solves one problem and writes its worst-case weights into `out` (same length as `losses`).
pub fn solve<T: Real>(losses: &[T], options: &Options, out: &mut [T]) -> Result<Solution> {
    let n = losses.len();
    if out.len() != n {
        return Err(CoreError::Shape(format!("output has length {} for {n} losses", out.len())));
    }
    check_tol(options.tol)?;
    let reference = match options.reference {
        None => Reference::uniform(n),
        Some(weights) => Reference::weighted(weights, n)?,
    };
    solve_with(losses, reference, options, out)
}

fn check_tol(tol: f64) -> Result<()> {
    if !(tol > 0.0 && tol.is_finite()) {
        return Err(CoreError::Budget(format!("tol must be positive and finite, got {tol}")));
    }
    Ok(())
}

/// `solve` with the reference checked and `out` of the losses' length: what every row of
/// `solve_rows` does on its own.
fn solve_with<T: Real>(losses: &[T], reference: Reference, options: &Options, out: &mut [T]) -> Result<Solution> {
    let batch = Batch::new(losses, reference)?;
    let radius = match options.budget {
        Budget::Radius(r) | Budget::Alpha(r) => Some(r),
        Budget::Penalty(_) => None,
    };
    let Some(labels) = options.groups else {
        let (outcome, plan) = solve_set(&batch, options, out)?;
        let value = batch.clamp_value(outcome.value);
        return Ok(Solution { value, dual: outcome.dual, iterations: outcome.iterations, radius, plan });
    };
    let grouped = groups::Grouped::new(losses, &reference, labels)?;
    let group_batch = Batch::new(&grouped.losses, Reference::weighted(&grouped.mass, grouped.mass.len())?)?;
    let mut group_weights = vec![0.0; grouped.losses.len()];
    // Wasserstein over groups moves mass between group centroids (or mean costs); the plan
    // it finds is between groups, so none is reported per sample.
    let group_geometry = match (options.ambiguity, &options.geometry) {
        (Ambiguity::Wasserstein, Some(geometry)) => Some(grouped.geometry(geometry, &reference)?),
        _ => None,
    };
    let group_options =
        Options { geometry: group_geometry.as_ref().map(|g| g.view()).or(options.geometry), ..*options };
    let (outcome, _) = solve_set(&group_batch, &group_options, &mut group_weights)?;
    grouped.expand(&group_weights, &reference, out);
    Ok(Solution {
        value: batch.clamp_value(batch.value_of(out)),
        dual: outcome.dual,
        iterations: outcome.iterations,
        radius,
        plan: None,
    })
}

fn solve_set<T: Real>(batch: &Batch<T>, options: &Options, out: &mut [T]) -> Result<(Outcome, Option<Plan>)> {
    let outcome = match (options.ambiguity, options.budget) {
        (Ambiguity::Kl, Budget::Radius(r)) => kl::solve_radius(batch, r, options.tol, out),
        (Ambiguity::Kl, Budget::Penalty(tau)) => kl::solve_temperature(batch, tau, out),
        (Ambiguity::Chi2, Budget::Radius(r)) => chi2::solve_radius(batch, r, out),
        (Ambiguity::Chi2, Budget::Penalty(lam)) => chi2::solve_penalty(batch, lam, out),
        (Ambiguity::Cvar, Budget::Alpha(alpha)) => cvar::solve(batch, alpha, out),
        (Ambiguity::Tv, Budget::Radius(r)) => tv::solve(batch, r, out),
        (Ambiguity::Wasserstein, budget) => {
            let geometry = options
                .geometry
                .ok_or_else(|| CoreError::Geometry("wasserstein needs features= (n x d) or cost= (n x n)".into()))?;
            let (outcome, plan) = wasserstein::solve(batch, &geometry, options.order, budget, options.tol, out)?;
            return Ok((outcome, Some(plan)));
        }
        (set, budget) => return Err(CoreError::Budget(format!("{budget:?} does not apply to {set:?}"))),
    };
    Ok((outcome, None))
}

/// Solves m problems at once, one per row of the row-major m x n `losses`; rows in parallel
/// when the batch is large. A reference or groups of length n are shared by every row; of
/// length m * n, given per row.
pub fn solve_rows<T: Real>(losses: &[T], columns: usize, options: &Options, out: &mut [T]) -> Result<Vec<Solution>> {
    if columns == 0 || losses.is_empty() {
        return Err(CoreError::Losses("losses are empty: a batch needs at least one sample".into()));
    }
    if losses.len() % columns != 0 || out.len() != losses.len() {
        return Err(CoreError::Shape(format!("{} losses do not split into rows of {columns}", losses.len())));
    }
    let rows = losses.len() / columns;
    if rows == 1 {
        // One problem, the usual call: no slicing per row, no iterator to collect.
        return Ok(vec![solve(losses, options, out)?]);
    }
    let per_row = |name: &str, len: usize| -> Result<bool> {
        if len == columns {
            Ok(false)
        } else if len == rows * columns {
            Ok(true)
        } else {
            Err(CoreError::Shape(format!(
                "{name} has {len} entries; it needs {columns} (shared by all rows) or {} (one per loss)",
                rows * columns
            )))
        }
    };
    let reference_per_row = options.reference.map(|r| per_row("reference", r.len())).transpose()?;
    let groups_per_row = options.groups.map(|g| per_row("groups", g.len())).transpose()?;
    // The work every row shares is done once: the tolerance and a shared reference checked.
    check_tol(options.tol)?;
    let shared_reference = match (options.reference, reference_per_row) {
        (Some(weights), Some(false)) => Some(Reference::weighted(weights, columns)?),
        _ => None,
    };
    let solve_row = |row: usize, l: &[T], o: &mut [T]| -> Result<Solution> {
        let span = row * columns..(row + 1) * columns;
        let reference = match (shared_reference, options.reference) {
            (Some(shared), _) => shared,
            (None, Some(weights)) => {
                Reference::weighted(&weights[span.clone()], columns).map_err(|e| prefix_row(e, row))?
            }
            (None, None) => Reference::uniform(columns),
        };
        let groups = options.groups.map(|g| if groups_per_row == Some(true) { &g[span] } else { g });
        let row_options = Options { groups, ..*options };
        solve_with(l, reference, &row_options, o).map_err(|e| prefix_row(e, row))
    };
    // Rows first..first + solutions.len(), one after another: each writes its solution in
    // place (collecting a Result per row cost a tenth of a solve of 64 losses).
    let solve_span = |first: usize, solutions: &mut [Solution], losses: &[T], out: &mut [T]| -> Result<()> {
        for (i, (solution, (l, o))) in
            solutions.iter_mut().zip(losses.chunks(columns).zip(out.chunks_mut(columns))).enumerate()
        {
            *solution = solve_row(first + i, l, o)?;
        }
        Ok(())
    };
    let mut solutions = vec![Solution { value: 0.0, dual: None, iterations: 0, radius: None, plan: None }; rows];
    if losses.len() < PARALLEL_MIN_ELEMENTS {
        solve_span(0, &mut solutions, losses, out)?;
        return Ok(solutions);
    }
    // Jobs of whole rows, ROWS_JOB_ELEMENTS losses or more, each a plain loop: one row of 64
    // is a solve of a few hundred nanoseconds, and rayon's machinery around every row (a job,
    // or an item of a chain of adaptors) took a good share of that. Each job's solutions and
    // weights behind a lock of their own, taken once, by the one thread that runs the job.
    let rows_per_job = (ROWS_JOB_ELEMENTS / columns).max(1);
    let spans: Vec<Mutex<(&mut [Solution], &mut [T])>> =
        solutions.chunks_mut(rows_per_job).zip(out.chunks_mut(rows_per_job * columns)).map(Mutex::new).collect();
    kernels::jobs::run(spans.len(), &|job| {
        let mut span = spans[job].lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (solutions, out) = &mut *span;
        let first = job * rows_per_job;
        let losses = &losses[first * columns..(first + solutions.len()) * columns];
        solve_span(first, solutions, losses, out)
    })?;
    drop(spans);
    Ok(solutions)
}

fn prefix_row(error: CoreError, row: usize) -> CoreError {
    let at = |m: String| format!("row {row}: {m}");
    match error {
        CoreError::Losses(m) => CoreError::Losses(at(m)),
        CoreError::Reference(m) => CoreError::Reference(at(m)),
        CoreError::Groups(m) => CoreError::Groups(at(m)),
        CoreError::Budget(m) => CoreError::Budget(at(m)),
        CoreError::Shape(m) => CoreError::Shape(at(m)),
        CoreError::Ambiguity(m) => CoreError::Ambiguity(at(m)),
        CoreError::Geometry(m) => CoreError::Geometry(at(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Rng;

    /// Rows solved together (in parallel above PARALLEL_MIN_ELEMENTS, a shared reference checked
    /// once) give every bit of one `solve` per row, and an error names its row.
    #[test]
    fn rows_together_match_one_solve_per_row() {
        let (rows, columns) = (PARALLEL_MIN_ELEMENTS / 64 + 3, 64);
        let mut rng = Rng::new(5);
        let mut losses: Vec<f64> = (0..rows * columns).map(|_| rng.uniform() * 3.0).collect();
        let reference: Vec<f64> = (0..columns).map(|k| 1.0 + (k % 3) as f64).collect();
        for (ambiguity, budget) in [
            (Ambiguity::Kl, Budget::Radius(0.1)),
            (Ambiguity::Chi2, Budget::Radius(0.5)),
            (Ambiguity::Cvar, Budget::Alpha(0.1)),
            (Ambiguity::Tv, Budget::Radius(0.1)),
        ] {
            for shared in [None, Some(&reference[..])] {
                let options = Options { reference: shared, ..Options::new(ambiguity, budget) };
                let mut together = vec![0.0; losses.len()];
                let solutions = solve_rows(&losses, columns, &options, &mut together).unwrap();
                assert_eq!(solutions.len(), rows);
                let mut one = vec![0.0; columns];
                for (row, (l, q)) in losses.chunks(columns).zip(together.chunks(columns)).enumerate() {
                    let solution = solve(l, &options, &mut one).unwrap();
                    assert_eq!(
                        one.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        q.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                    );
                    assert_eq!(solution, solutions[row]);
                }
            }
        }
        // Two bad rows in different jobs: the error is the first one's, as in a serial loop,
        // whichever thread meets a bad row first.
        losses[777 * columns + 5] = f64::NAN;
        losses[(rows - 2) * columns] = f64::INFINITY;
        let mut out = vec![0.0; losses.len()];
        for _ in 0..20 {
            let error = solve_rows(&losses, columns, &Options::new(Ambiguity::Chi2, Budget::Radius(0.5)), &mut out);
            assert!(matches!(&error, Err(CoreError::Losses(m)) if m.starts_with("row 777: ")), "{error:?}");
        }
    }
}
