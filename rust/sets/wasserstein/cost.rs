//! The ground cost of the Wasserstein set, c_ij = d_ij^p (docs/method.md#wasserstein): validated once,
//! scaled so that no power overflows, and served one row at a time to the dual's passes.
//!
//! The matrix exists at most once. A caller's distance matrix with p = 1 is read in place. With
//! features, or another p, rows are computed blockwise on the fly, one row per thread-local
//! buffer; a solve that will make several passes (`cache`) first computes them all into a
//! cache when n^2 entries fit in `CACHE_MAX_ENTRIES`: a constrained solve reads the costs
//! several times, so computing them once pays; a single pass (the penalised form) is faster
//! streamed, without the allocation.
//!
//! Scaling: distances are divided by a power of two s >= the largest distance, so the scaled
//! costs c'_ij = (d_ij / s)^p lie in [0, 1], are exact multiples of the true ones for p = 1 and
//! 2, and keep exact zeros (duplicate points) exactly zero. The solver works in c' and
//! converts a dual variable back with `factor` = s^-p.

use std::borrow::Cow;

use rayon::prelude::*;

use super::Geometry;
use crate::error::{CoreError, Result};

/// The largest cost matrix kept in memory: 2^24 f64 entries = 128 MiB (n = 4096). A cached
/// entry costs one load per pass; a recomputed one d subtractions and multiplications.
const CACHE_MAX_ENTRIES: usize = 1 << 24;

/// Samples per block of the feature layout: eight AVX2 registers of f64, enough independent
/// sums to hide the latency of the additions.
const BLOCK: usize = 32;

/// How the cost follows from a distance: the common types without `powf`.
#[derive(Clone, Copy, Debug)]
enum Power {
    One,
    Two,
    Other(f64),
}

impl Power {
    fn new(order: f64) -> Self {
        if order == 1.0 {
            Power::One
        } else if order == 2.0 {
            Power::Two
        } else {
            Power::Other(order)
        }
    }

    #[inline(always)]
    fn of_distance(self, d: f64) -> f64 {
        match self {
            Power::One => d,
            Power::Two => d * d,
            Power::Other(p) => d.powf(p),
        }
    }

    #[inline(always)]
    fn of_squared(self, squared: f64) -> f64 {
        match self {
            Power::One => squared.sqrt(),
            Power::Two => squared,
            Power::Other(p) => squared.powf(0.5 * p),
        }
    }
}

enum Rows<'a> {
    /// Row-major n x n costs: the caller's distance matrix as it is (p = 1, s = 1), or the
    /// cache of scaled costs.
    Stored(Cow<'a, [f64]>),
    /// Computed row by row at every pass.
    Computed(Recipe<'a>),
}

enum Recipe<'a> {
    /// The caller's distance matrix, scaled and raised to p.
    Distances { distances: &'a [f64], inv_scale: f64, power: Power },
    /// Scaled features in blocks of `BLOCK` samples, each block dim x BLOCK (feature-major), so
    /// that the squared distances to a block stay in registers across the dim features.
    Features { blocks: Vec<f64>, dim: usize, power: Power },
}

impl Recipe<'_> {
    /// The scaled costs from source i to all n targets.
    fn fill(&self, i: usize, out: &mut [f64]) {
        let n = out.len();
        match self {
            Recipe::Distances { distances, inv_scale, power } => {
                for (o, &d) in out.iter_mut().zip(&distances[i * n..(i + 1) * n]) {
                    *o = power.of_distance(d * inv_scale);
                }
            }
            Recipe::Features { blocks, dim, power } => {
                let dim = *dim;
                let (block_of_i, lane_of_i) = (i / BLOCK, i % BLOCK);
                let x: Vec<f64> = blocks[block_of_i * dim * BLOCK..][..dim * BLOCK]
                    .chunks_exact(BLOCK)
                    .map(|lanes| lanes[lane_of_i])
                    .collect();
                features_row(blocks, &x, *power, out);
            }
        }
    }
}

/// The scaled cost rows of one problem.
pub(super) struct GroundCost<'a> {
    n: usize,
    rows: Rows<'a>,
    order: f64,
    /// 1 / s.
    inv_scale: f64,
    /// The most entries `cache` keeps.
    cache_limit: usize,
}

impl<'a> GroundCost<'a> {
    /// Validates the geometry against n samples and prepares the rows. `order` is the type p
    /// (checked by the caller: finite, >= 1).
    pub fn new(geometry: &Geometry<'a>, n: usize, order: f64) -> Result<Self> {
        Self::with_cache_limit(geometry, n, order, CACHE_MAX_ENTRIES)
    }

    /// Computes every row once into a cache if they are computed on the fly and fit.
    pub fn cache(&mut self) {
        if let Rows::Computed(recipe) = &self.rows {
            if self.n.checked_mul(self.n).is_some_and(|entries| entries <= self.cache_limit) {
                self.rows = Rows::Stored(Cow::Owned(materialise(recipe, self.n)));
            }
        }
    }

    pub(super) fn with_cache_limit(geometry: &Geometry<'a>, n: usize, order: f64, cache_limit: usize) -> Result<Self> {
        let power = Power::new(order);
        let (recipe, inv_scale) = match *geometry {
            Geometry::Cost(distances) => {
                let largest = validate_distances(distances, n)?;
                match power {
                    Power::One => {
                        let rows = Rows::Stored(Cow::Borrowed(distances));
                        return Ok(GroundCost { n, rows, order, inv_scale: 1.0, cache_limit });
                    }
                    _ => {
                        let inv = 1.0 / power_of_two_above(largest);
                        (Recipe::Distances { distances, inv_scale: inv, power }, inv)
                    }
                }
            }
            Geometry::Features { data, dim } => {
                let largest = validate_features(data, dim, n)?;
                // ||x_i - x_j|| <= 2 sqrt(dim) max |x|.
                let scale = power_of_two_above(2.0 * (dim as f64).sqrt() * largest);
                let inv = 1.0 / scale;
                // Padding samples (a copy of none: zeros) fill the last block; their costs are
                // never written out.
                let mut blocks = vec![0.0; n.div_ceil(BLOCK) * dim * BLOCK];
                for (i, row) in data.chunks_exact(dim).enumerate() {
                    for (k, &x) in row.iter().enumerate() {
                        blocks[((i / BLOCK) * dim + k) * BLOCK + i % BLOCK] = x * inv;
                    }
                }
                (Recipe::Features { blocks, dim, power }, inv)
            }
        };
        Ok(GroundCost { n, rows: Rows::Computed(recipe), order, inv_scale, cache_limit })
    }

    /// Whether `row` needs a buffer of n entries to write into.
    pub fn needs_buffer(&self) -> bool {
        matches!(self.rows, Rows::Computed(_))
    }

    /// The scaled cost c'_ij alone, bit for bit as in `row` (the same operations in the same
    /// order).
    pub fn entry(&self, i: usize, j: usize) -> f64 {
        let n = self.n;
        match &self.rows {
            Rows::Stored(costs) => costs[i * n + j],
            Rows::Computed(Recipe::Distances { distances, inv_scale, power }) => {
                power.of_distance(distances[i * n + j] * inv_scale)
            }
            Rows::Computed(Recipe::Features { blocks, dim, power }) => {
                let at = |s: usize, k: usize| blocks[((s / BLOCK) * dim + k) * BLOCK + s % BLOCK];
                let mut sum = 0.0;
                for k in 0..*dim {
                    let diff = at(j, k) - at(i, k);
                    sum += diff * diff;
                }
                power.of_squared(sum)
            }
        }
    }

    /// The scaled costs c'_i. from source i to every target. `buffer` (n entries when
    /// `needs_buffer`, else may be empty) holds them when they are computed on the fly.
    #[inline]
    pub fn row<'s>(&'s self, i: usize, buffer: &'s mut [f64]) -> &'s [f64] {
        let n = self.n;
        match &self.rows {
            Rows::Stored(costs) => &costs[i * n..(i + 1) * n],
            Rows::Computed(recipe) => {
                recipe.fill(i, buffer);
                buffer
            }
        }
    }

    /// rho^p in the scaled units.
    pub fn budget(&self, radius: f64) -> f64 {
        Power::new(self.order).of_distance(radius * self.inv_scale)
    }

    /// s^-p: a scaled cost is the true cost times this factor, so a dual variable in the
    /// scaled units is the true one divided by it.
    pub fn factor(&self) -> f64 {
        Power::new(self.order).of_distance(self.inv_scale)
    }
}

/// The scaled costs from the sample with features x to all samples (blocks: dim x BLOCK each,
/// features summed in order); compiled for AVX2 where the CPU has it (the portable build
/// assumes only SSE2). Both versions round identically: no fused multiply-add.
#[inline]
fn features_row(blocks: &[f64], x: &[f64], power: Power, out: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::cpu::avx2().is_some() {
        // SAFETY: `cpu::avx2()` is Some: the processor has AVX2.
        return unsafe { features_row_avx2(blocks, x, power, out) };
    }
    features_row_portable(blocks, x, power, out)
}

/// # Safety
/// The processor has AVX2 (`cpu::avx2()` is Some).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn features_row_avx2(blocks: &[f64], x: &[f64], power: Power, out: &mut [f64]) {
    features_row_portable(blocks, x, power, out)
}

#[inline(always)]
fn features_row_portable(blocks: &[f64], x: &[f64], power: Power, out: &mut [f64]) {
    for (block, o) in blocks.chunks_exact(x.len() * BLOCK).zip(out.chunks_mut(BLOCK)) {
        let mut sums = [0.0; BLOCK];
        for (lanes, &xk) in block.chunks_exact(BLOCK).zip(x) {
            for t in 0..BLOCK {
                let diff = lanes[t] - xk;
                sums[t] += diff * diff;
            }
        }
        for (o, &s) in o.iter_mut().zip(&sums) {
            *o = power.of_squared(s);
        }
    }
}

/// Every row once, in parallel for large n.
fn materialise(recipe: &Recipe, n: usize) -> Vec<f64> {
    let mut cache = vec![0.0; n * n];
    let fill = |(i, row): (usize, &mut [f64])| recipe.fill(i, row);
    if n * n >= super::PARALLEL_MIN_ENTRIES {
        cache.par_chunks_mut(n).enumerate().for_each(fill);
    } else {
        cache.chunks_mut(n).enumerate().for_each(fill);
    }
    cache
}

/// Checks an n x n matrix of distances: finite, non-negative, zero on the diagonal (staying
/// put must be free, or radius 0 would have no feasible plan). Returns the largest entry.
fn validate_distances(distances: &[f64], n: usize) -> Result<f64> {
    if Some(distances.len()) != n.checked_mul(n) {
        return Err(CoreError::Geometry(format!(
            "cost has {} entries; with {n} samples it must be an {n} x {n} matrix",
            distances.len()
        )));
    }
    let mut largest = 0.0_f64;
    for (k, &d) in distances.iter().enumerate() {
        let (i, j) = (k / n, k % n);
        if !(d.is_finite() && d >= 0.0) {
            return Err(CoreError::Geometry(format!(
                "cost must hold finite, non-negative distances, got {d} at ({i}, {j})"
            )));
        }
        if i == j && d != 0.0 {
            return Err(CoreError::Geometry(format!(
                "cost must have a zero diagonal (a sample stays where it is for free), got {d} at ({i}, {i})"
            )));
        }
        largest = largest.max(d);
    }
    Ok(largest)
}

/// Checks n rows of dim finite features. Returns the largest absolute value.
fn validate_features(data: &[f64], dim: usize, n: usize) -> Result<f64> {
    if dim == 0 {
        return Err(CoreError::Geometry("features have d = 0 columns: give at least one feature per sample".into()));
    }
    if Some(data.len()) != n.checked_mul(dim) {
        return Err(CoreError::Geometry(format!(
            "features have {} values; with {n} samples and d = {dim} they must be an {n} x {dim} array",
            data.len()
        )));
    }
    let mut largest = 0.0_f64;
    for (k, &x) in data.iter().enumerate() {
        if !x.is_finite() {
            return Err(CoreError::Geometry(format!("features must be finite, got {x} at ({}, {})", k / dim, k % dim)));
        }
        largest = largest.max(x.abs());
    }
    Ok(largest)
}

/// The smallest power of two >= x (1 for x = 0), within the range where its inverse is a
/// normal number.
fn power_of_two_above(x: f64) -> f64 {
    if x > 0.0 {
        2.0_f64.powi((x.log2().ceil() as i32).clamp(-1000, 1000))
    } else {
        1.0
    }
}
