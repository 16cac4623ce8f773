//! Type-p Wasserstein ball over the batch support (SPEC.md section 2). Being written.

use crate::batch::Batch;
use crate::error::{CoreError, Result};
use crate::real::Real;
use crate::{Budget, Outcome};

/// The ground metric between the samples.
#[derive(Clone, Copy, Debug)]
pub enum Geometry<'a> {
    /// Row-major n x dim features; d_ij is the Euclidean distance between rows i and j.
    Features { data: &'a [f64], dim: usize },
    /// Row-major n x n matrix of distances d_ij.
    Cost(&'a [f64]),
}

/// A transport plan in sparse form: mass[k] moves from source[k] to target[k].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub source: Vec<usize>,
    pub target: Vec<usize>,
    pub mass: Vec<f64>,
}

pub fn solve<T: Real>(
    _batch: &Batch<T>,
    _geometry: &Geometry,
    _order: f64,
    _budget: Budget,
    _tol: f64,
    _out: &mut [T],
) -> Result<(Outcome, Plan)> {
    Err(CoreError::Geometry("wasserstein is not built yet".into()))
}
