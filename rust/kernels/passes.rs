//! The passes every solver makes over the losses, written once so they run fast: sums in
//! `LANES` independent accumulators (the compiler vectorises them and the additions no longer
//! wait on each other), split across threads for large batches, and specialised for the
//! uniform reference so the hot loop loads only the losses.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::kernels::batch::{Reference, Scale};
// The AVX2 kernels exist on x86_64 only; elsewhere the portable passes run.
#[cfg(target_arch = "x86_64")]
use crate::kernels::cpu;
use crate::kernels::real::Real;

/// Independent accumulators per quantity.
const LANES: usize = 4;

/// Below this many losses a pass stays on one thread.
const PARALLEL_MIN: usize = 1 << 16;

/// sum_i term(l_i, p_i) for K quantities at once.
pub fn sum<T: Real, const K: usize>(
    losses: &[T],
    reference: &Reference,
    term: impl Fn(f64, f64) -> [f64; K] + Sync,
) -> [f64; K] {
    let scale = reference.scale();
    fold_chunks(losses, reference, |part, weights| sum_dispatch(part, weights, scale, &term), add)
}

/// The sums of the chi-square solves over the active set A = {i : u_i > threshold, p_i > 0}:
/// the count of A, sum_A p, sum_A p d, sum_A p d^2 with d = u - shift, and the mass of p
/// outside A. `sum` computes them on any processor; on AVX2 a kernel of its own
/// (`cpu::avx2::sum_above`) gives the same bits faster (through `sum`, the selects on A keep the
/// terms from vectorising).
pub fn sum_above<T: Real>(losses: &[T], reference: &Reference, scale: &Scale, threshold: f64, shift: f64) -> [f64; 5] {
    let p_scale = reference.scale();
    let term = |l: f64, p: f64| {
        let u = scale.u(l);
        let on = u > threshold && p > 0.0;
        let (m, d) = (if on { p } else { 0.0 }, u - shift);
        [if on { 1.0 } else { 0.0 }, m, m * d, m * d * d, p - m]
    };
    fold_chunks(
        losses,
        reference,
        |part, weights| {
            #[cfg(target_arch = "x86_64")]
            if cpu::avx2().is_some() {
                // SAFETY: `cpu::avx2()` is Some: the processor has AVX2. A chunk's weights have
                // its length (`fold_chunks`).
                return unsafe { cpu::avx2::sum_above(part, weights, p_scale, (scale, threshold, shift), &term) };
            }
            sum_dispatch(part, weights, p_scale, &term)
        },
        add,
    )
}

/// out_i = weight(l_i, p_i) for every i, and returns sum_i stats(l_i, out_i) (K sums in f64).
pub fn write<T: Real, const K: usize>(
    losses: &[T],
    reference: &Reference,
    out: &mut [T],
    weight: impl Fn(f64, f64) -> f64 + Sync,
    stats: impl Fn(f64, f64) -> [f64; K] + Sync,
) -> [f64; K] {
    let scale = reference.scale();
    write_chunks(losses, out, |part, out, start| {
        write_dispatch(part, reference.slice(start, part.len()), scale, out, &weight, &stats)
    })
}

/// `write` for weights that are an exponential: out_i = weight(exp(beta u_i), p_i) with
/// u_i = position(l_i) <= 0 and beta >= 0, and returns sum_i stats(u_i, out_i). The positions
/// and exps of a block are taken in loops of their own: inside the map with everything else,
/// the vectorised loop runs out of registers and waits on the exp's chain; the map reads u
/// back rather than computing it again.
pub fn write_exp<T: Real, const K: usize>(
    losses: &[T],
    reference: &Reference,
    out: &mut [T],
    (position, beta): (impl Fn(f64) -> f64 + Sync, f64),
    weight: impl Fn(f64, f64) -> f64 + Sync,
    stats: impl Fn(f64, f64) -> [f64; K] + Sync,
) -> [f64; K] {
    let scale = reference.scale();
    write_chunks(losses, out, |part, out, start| {
        write_exp_dispatch(part, reference.slice(start, part.len()), scale, out, (&position, beta), &weight, &stats)
    })
}

/// serial(losses, out, start) over the chunks of the losses and of `out` (start: the chunk's
/// first index), in parallel for large batches; the K sums added in chunk order.
fn write_chunks<T: Real, const K: usize>(
    losses: &[T],
    out: &mut [T],
    serial: impl Fn(&[T], &mut [T], usize) -> [f64; K] + Sync,
) -> [f64; K] {
    let chunks = chunk_len(losses.len());
    if chunks == losses.len() {
        return serial(losses, out, 0);
    }
    let parts: Vec<[f64; K]> = losses
        .par_chunks(chunks)
        .zip(out.par_chunks_mut(chunks))
        .enumerate()
        .map(|(c, (part, o))| serial(part, o, c * chunks))
        .collect();
    parts.into_iter().reduce(add).expect("a non-empty batch has a chunk")
}

/// part(losses, raw reference weights) over the chunks of the losses, in parallel for large
/// batches, merged in chunk order (rayon's `reduce` would merge in whatever order its splits
/// take, and the sums' last bits would follow the number of threads): the sums, and the passes
/// that are not sums (the extremes, a histogram, the losses of one bin).
pub fn fold_chunks<T: Real, R: Send>(
    losses: &[T],
    reference: &Reference,
    part: impl Fn(&[T], Option<&[f64]>) -> R + Sync,
    merge: impl Fn(R, R) -> R + Sync,
) -> R {
    let chunks = chunk_len(losses.len());
    if chunks == losses.len() {
        return part(losses, reference.slice(0, losses.len()));
    }
    let parts: Vec<R> =
        losses.par_chunks(chunks).enumerate().map(|(c, ls)| part(ls, reference.slice(c * chunks, ls.len()))).collect();
    parts.into_iter().reduce(merge).expect("a non-empty batch has a chunk")
}

/// The extremes of the losses on the support of p, and the mass of p at the max, in one pass;
/// None if any loss (also where p is zero) is NaN or infinite.
pub fn extremes<T: Real>(losses: &[T], reference: &Reference) -> Option<Extremes> {
    let scale = reference.scale();
    let serial = |part: &[T], weights: Option<&[f64]>| {
        #[cfg(target_arch = "x86_64")]
        if cpu::avx2().is_some() {
            // SAFETY: `cpu::avx2()` is Some: the processor has AVX2 and FMA, and no switch forces the portable build.
            return unsafe { extremes_serial_avx2(part, weights, scale) };
        }
        extremes_serial(part, weights, scale)
    };
    fold_chunks(losses, reference, serial, |a, b| Some(a?.merge(b?)))
}

/// Block by block: the range of a block in a loop that vectorises, then the mass at the block's
/// max in a second loop over the block (still in L1), only where that max reaches the running
/// one: rarely, past the first blocks. One loop doing all three with selects compiles to
/// scalar code with branches.
#[inline(always)]
fn extremes_serial<T: Real>(part: &[T], weights: Option<&[f64]>, scale: f64) -> Option<Extremes> {
    let mut extremes = Extremes::EMPTY;
    for (b, ls) in part.chunks(BLOCK).enumerate() {
        let ps = weights.map(|w| &w[b * BLOCK..b * BLOCK + ls.len()]);
        let (max, min) = block_range(ls, ps, scale)?;
        extremes.min = extremes.min.min(min);
        if max >= extremes.max {
            let mass = mass_at(ls, ps, scale, max);
            extremes.mass_at_max = if max > extremes.max { mass } else { extremes.mass_at_max + mass };
            extremes.max = max;
        }
    }
    Some(extremes)
}

/// The largest and smallest loss of a block on the support of p (-inf and inf where the block
/// has none), or None if a loss of the block (also where p is zero) is NaN or infinite.
/// Compared as integers (`order_key`): LLVM vectorises integer max and min reductions, and no
/// float form of them (as selects, the lanes go through a shuffle of masks every step, and
/// f64::max stays scalar).
#[inline(always)]
fn block_range<T: Real>(ls: &[T], ps: Option<&[f64]>, scale: f64) -> Option<(f64, f64)> {
    let (neg_infinity, infinity) = (order_key(f64::NEG_INFINITY), order_key(f64::INFINITY));
    let (mut max, mut min) = (neg_infinity, infinity);
    match ps {
        // Every loss is on the support: a NaN or an infinity is itself beyond the range
        // [-inf, inf] of the keys (a NaN's key lies past the infinity of its sign).
        None => {
            let (mut top, mut bottom) = (i64::MIN, i64::MAX);
            for &l in ls {
                let key = order_key(l.to_f64());
                top = top.max(key);
                bottom = bottom.min(key);
            }
            if top >= infinity || bottom <= neg_infinity {
                return None;
            }
            (max, min) = (top, bottom);
        }
        Some(ps) => {
            let mut magnitude = 0;
            for (&l, &w) in ls.iter().zip(ps) {
                let l = l.to_f64();
                magnitude = magnitude.max((l.to_bits() & !SIGN) as i64);
                let (key, on) = (order_key(l), w * scale > 0.0);
                max = max.max(if on { key } else { neg_infinity });
                min = min.min(if on { key } else { infinity });
            }
            if magnitude >= infinity {
                return None;
            }
        }
    }
    Some((from_order_key(max), from_order_key(min)))
}

const SIGN: u64 = 1 << 63;

/// An integer that orders as the float does: the bits themselves for x >= +0, all bits but the
/// sign flipped below (so -0 comes just below +0).
#[inline(always)]
fn order_key(x: f64) -> i64 {
    let bits = x.to_bits() as i64;
    bits ^ (((bits >> 63) as u64 >> 1) as i64)
}

#[inline(always)]
fn from_order_key(key: i64) -> f64 {
    // The map is its own inverse.
    f64::from_bits(order_key(f64::from_bits(key as u64)) as u64)
}

/// The mass of p at the loss `max` within a block: the number of ties times 1/n for the
/// uniform reference (exact), their weights summed in order otherwise.
#[inline(always)]
fn mass_at<T: Real>(ls: &[T], ps: Option<&[f64]>, scale: f64, max: f64) -> f64 {
    match ps {
        None => ls.iter().filter(|l| l.to_f64() == max).count() as f64 * scale,
        Some(ps) => ls
            .iter()
            .zip(ps)
            .map(|(l, &w)| (l.to_f64(), w * scale))
            .filter(|&(l, p)| p > 0.0 && l == max)
            .map(|(_, p)| p)
            .sum(),
    }
}

/// # Safety
/// The processor has AVX2 (`cpu::avx2()` is Some).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn extremes_serial_avx2<T: Real>(part: &[T], weights: Option<&[f64]>, scale: f64) -> Option<Extremes> {
    extremes_serial(part, weights, scale)
}

#[derive(Clone, Copy, Debug)]
pub struct Extremes {
    pub max: f64,
    pub min: f64,
    pub mass_at_max: f64,
}

impl Extremes {
    const EMPTY: Extremes = Extremes { max: f64::NEG_INFINITY, min: f64::INFINITY, mass_at_max: 0.0 };

    fn merge(self, other: Extremes) -> Extremes {
        let mass_at_max = if self.max > other.max {
            self.mass_at_max
        } else if other.max > self.max {
            other.mass_at_max
        } else {
            self.mass_at_max + other.mass_at_max
        };
        Extremes { max: self.max.max(other.max), min: self.min.min(other.min), mass_at_max }
    }
}

/// out_i /= total, so the weights sum to one; returns sum_i out_i * l_i after scaling. Divides
/// outright only where 1 / total overflows (a subnormal total).
pub fn normalise<T: Real>(losses: &[T], out: &mut [T], total: f64) -> f64 {
    normalise_by(losses, out, total, |_| 1.0)
}

/// out_i *= factor(l_i) / total; returns sum_i out_i * l_i after scaling.
pub fn normalise_by<T: Real>(losses: &[T], out: &mut [T], total: f64, factor: impl Fn(f64) -> f64 + Sync) -> f64 {
    let serial = |part: &[T], out: &mut [T]| {
        #[cfg(target_arch = "x86_64")]
        if cpu::avx2().is_some() {
            // SAFETY: `cpu::avx2()` is Some: the processor has AVX2 and FMA, and no switch forces the portable build.
            return unsafe { normalise_serial_avx2(part, out, total, &factor) };
        }
        normalise_serial(part, out, total, &factor)
    };
    let [value] = write_chunks(losses, out, |part, out, _| [serial(part, out)]);
    value
}

#[inline(always)]
fn normalise_serial<T: Real>(part: &[T], out: &mut [T], total: f64, factor: &impl Fn(f64) -> f64) -> f64 {
    let inverse = 1.0 / total;
    let divide = !inverse.is_finite();
    let mut acc = [0.0; LANES];
    let whole = part.len() - part.len() % LANES;
    let scaled = |w: f64, l: f64| {
        let w = w * factor(l);
        if divide {
            w / total
        } else {
            w * inverse
        }
    };
    for (ls, os) in part[..whole].chunks_exact(LANES).zip(out[..whole].chunks_exact_mut(LANES)) {
        for j in 0..LANES {
            let l = ls[j].to_f64();
            let q = scaled(os[j].to_f64(), l);
            os[j] = T::from_f64(q);
            acc[j] += q * l;
        }
    }
    for k in whole..part.len() {
        let l = part[k].to_f64();
        let q = scaled(out[k].to_f64(), l);
        out[k] = T::from_f64(q);
        acc[0] += q * l;
    }
    sum_in_order(&acc)
}

/// # Safety
/// The processor has AVX2 (`cpu::avx2()` is Some).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn normalise_serial_avx2<T: Real>(part: &[T], out: &mut [T], total: f64, factor: &impl Fn(f64) -> f64) -> f64 {
    normalise_serial(part, out, total, factor)
}

/// The serial passes compiled a second time for AVX2 and FMA (four doubles a vector, against
/// two for baseline x86-64), and the function that picks one at run time (`cpu::avx2()`). `#[inline(always)]` on the passes makes
/// each copy carry its own inlined body and closure. A pass with a `FUSED` parameter gets the
/// first of the bracketed values in the AVX2 copy and the second elsewhere.
macro_rules! vectorised {
    ($pass:ident $([$fused:literal, $unfused:literal])?, $wide:ident, $dispatch:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        /// # Safety
        /// The processor has AVX2 and FMA (`cpu::avx2()` is Some).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $wide<T: Real, const K: usize>($($arg: $ty),*) -> $ret {
            $pass::<T, K $(, $fused)?>($($arg),*)
        }

        fn $dispatch<T: Real, const K: usize>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            if cpu::avx2().is_some() {
                // SAFETY: `cpu::avx2()` is Some: the processor has AVX2 and FMA, and no switch forces the portable build.
                return unsafe { $wide($($arg),*) };
            }
            $pass::<T, K $(, $unfused)?>($($arg),*)
        }
    };
}

vectorised!(sum_serial, sum_serial_avx2, sum_dispatch,
    (losses: &[T], weights: Option<&[f64]>, scale: f64, term: &impl Fn(f64, f64) -> [f64; K]) -> [f64; K]);
vectorised!(write_serial, write_serial_avx2, write_dispatch,
    (part: &[T], weights: Option<&[f64]>, scale: f64, out: &mut [T], weight: &impl Fn(f64, f64) -> f64, stats: &impl Fn(f64, f64) -> [f64; K]) -> [f64; K]);
vectorised!(write_exp_serial[true, false], write_exp_serial_avx2, write_exp_dispatch,
    (part: &[T], weights: Option<&[f64]>, scale: f64, out: &mut [T], tilt: (&impl Fn(f64) -> f64, f64), weight: &impl Fn(f64, f64) -> f64, stats: &impl Fn(f64, f64) -> [f64; K]) -> [f64; K]);

/// The chunks of a parallel pass: 2 to 16 of them, at least 2^15 losses each, fixed by n alone
/// (not by the number of threads), and their results added in order. Then the order of every
/// sum, and so every bit of the answer, is the same with any number of threads (and on any
/// machine of one kind: x86-64 with AVX2 and FMA, or any other; see `exp_nonpositive`):
/// with n / threads a chunk, one and two threads gave KL weights 1e-12 apart at 2^20 losses
/// (the solve ended on either side of its tolerance). Sixteen chunks keep the per-chunk
/// histograms of select.rs and binned.rs cheap to add up.
fn chunk_len(n: usize) -> usize {
    if n < PARALLEL_MIN {
        return n.max(1);
    }
    let chunks = (n >> 15).clamp(2, 16);
    n.div_ceil(chunks).next_multiple_of(LANES)
}

/// Elements per block: the block's terms stay in L1 between the map and the reduction.
const BLOCK: usize = 256;

/// The K terms of each element of one block (at most BLOCK elements), one column per quantity.
/// A plain map over the block, which the compiler vectorises reliably; the sums are then taken
/// column by column (`Lanes::add_columns`). Summing the terms as they come, in LANES accumulators
/// of K quantities, leaves the compiler to vectorise across lanes, which it does not: scalar
/// code.
struct Columns<const K: usize> {
    terms: [[MaybeUninit<f64>; BLOCK]; K],
    /// How many elements of every column the last `map` wrote.
    written: usize,
}

impl<const K: usize> Columns<K> {
    /// Uninitialised: zeroing K x 256 doubles cost more than a whole solve at n = 64, and `map`
    /// writes every element that `column` then reads.
    fn new() -> Self {
        Columns { terms: [[MaybeUninit::uninit(); BLOCK]; K], written: 0 }
    }

    /// columns[k][i] = term(i, l_i, p_i)[k], and out_i = weight (the first output of `term`)
    /// where `out` is given.
    #[inline(always)]
    fn map<T: Real>(
        &mut self,
        losses: &[T],
        weights: Option<&[f64]>,
        scale: f64,
        mut out: Option<&mut [T]>,
        term: &impl Fn(usize, f64, f64) -> (f64, [f64; K]),
    ) {
        let len = losses.len();
        assert!(
            len <= BLOCK && weights.map_or(true, |w| w.len() == len) && out.as_ref().map_or(true, |o| o.len() == len)
        );
        let columns = &mut self.terms;
        let mut put = |i: usize, l: T, p: f64, out: &mut Option<&mut [T]>| {
            let (w, terms) = term(i, l.to_f64(), p);
            if let Some(o) = out {
                o[i] = T::from_f64(w);
            }
            for k in 0..K {
                columns[k][i] = MaybeUninit::new(terms[k]);
            }
        };
        match weights {
            None => {
                for (i, &l) in losses.iter().enumerate() {
                    put(i, l, scale, &mut out);
                }
            }
            Some(ws) => {
                for (i, (&l, &w)) in losses.iter().zip(ws).enumerate() {
                    put(i, l, w * scale, &mut out);
                }
            }
        }
        self.written = len;
    }

    /// The first `len` terms of quantity k, as written by the last `map` of `len` elements.
    #[inline(always)]
    fn column(&self, k: usize, len: usize) -> &[f64] {
        debug_assert!(len <= self.written);
        let written = &self.terms[k][..len];
        // SAFETY: the last `map` wrote elements 0..self.written of every column, and len <=
        // self.written (the callers pass the length of the block they mapped last); the slice
        // is in bounds (indexed above); MaybeUninit<f64> has the size and alignment of f64.
        unsafe { &*(written as *const [MaybeUninit<f64>] as *const [f64]) }
    }
}

/// K sums in LANES independent accumulators each (a fixed order: the sums do not depend on
/// the machine).
struct Lanes<const K: usize>([[f64; LANES]; K]);

impl<const K: usize> Lanes<K> {
    fn new() -> Self {
        Lanes([[0.0; LANES]; K])
    }

    /// Adds the first `len` terms of every column.
    #[inline(always)]
    fn add_columns(&mut self, columns: &Columns<K>, len: usize) {
        for (k, acc) in self.0.iter_mut().enumerate() {
            let mut groups = columns.column(k, len).chunks_exact(LANES);
            for group in &mut groups {
                for j in 0..LANES {
                    acc[j] += group[j];
                }
            }
            for (a, &x) in acc.iter_mut().zip(groups.remainder()) {
                *a += x;
            }
        }
    }

    /// out_i = weight(e_i, p_i) for a block of a multiple of LANES, with stats(u_i, out_i)
    /// added to lane i mod LANES as it goes: where `weight` and `stats` are plain arithmetic
    /// this vectorises across the lanes and saves the columns' stores and loads. A select in
    /// `weight`, or a tail added to a lane picked at run time, makes it scalar.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)] // the pass's own arguments, passed through
    fn add_weights<T: Real>(
        &mut self,
        out: &mut [T],
        es: &[f64],
        us: &[f64],
        weights: Option<&[f64]>,
        scale: f64,
        weight: &impl Fn(f64, f64) -> f64,
        stats: &impl Fn(f64, f64) -> [f64; K],
    ) {
        let len = out.len();
        assert!(len % LANES == 0 && es.len() == len && us.len() == len && weights.map_or(true, |w| w.len() == len));
        let groups = out.chunks_exact_mut(LANES).zip(es.chunks_exact(LANES)).zip(us.chunks_exact(LANES));
        match weights {
            None => {
                for ((o, e), u) in groups {
                    for j in 0..LANES {
                        let w = weight(e[j], scale);
                        o[j] = T::from_f64(w);
                        for (lane, term) in self.0.iter_mut().zip(stats(u[j], w)) {
                            lane[j] += term;
                        }
                    }
                }
            }
            Some(ws) => {
                for (((o, e), u), ps) in groups.zip(ws.chunks_exact(LANES)) {
                    for j in 0..LANES {
                        let w = weight(e[j], ps[j] * scale);
                        o[j] = T::from_f64(w);
                        for (lane, term) in self.0.iter_mut().zip(stats(u[j], w)) {
                            lane[j] += term;
                        }
                    }
                }
            }
        }
    }

    fn total(&self) -> [f64; K] {
        let mut total = [0.0; K];
        for (t, lanes) in total.iter_mut().zip(&self.0) {
            *t = sum_in_order(lanes);
        }
        total
    }
}

/// Blocks of the map, each summed while in L1; out_i = the first output of `term` where `out`
/// is given. The weights are kept in f64 for the sums: the sums must not see them rounded to T
/// (float32 KL lost its small radii to that).
#[inline(always)]
fn fold_blocks<T: Real, const K: usize>(
    part: &[T],
    weights: Option<&[f64]>,
    scale: f64,
    mut out: Option<&mut [T]>,
    term: &impl Fn(usize, f64, f64) -> (f64, [f64; K]),
) -> [f64; K] {
    let (mut columns, mut acc) = (Columns::<K>::new(), Lanes::<K>::new());
    for (b, ls) in part.chunks(BLOCK).enumerate() {
        let block = b * BLOCK..b * BLOCK + ls.len();
        let ws = weights.map(|w| &w[block.clone()]);
        let os = out.as_deref_mut().map(|o| &mut o[block]);
        columns.map(ls, ws, scale, os, term);
        acc.add_columns(&columns, ls.len());
    }
    acc.total()
}

#[inline(always)]
fn write_serial<T: Real, const K: usize>(
    part: &[T],
    weights: Option<&[f64]>,
    scale: f64,
    out: &mut [T],
    weight: &impl Fn(f64, f64) -> f64,
    stats: &impl Fn(f64, f64) -> [f64; K],
) -> [f64; K] {
    fold_blocks(part, weights, scale, Some(out), &|_, l, p| {
        let w = weight(l, p);
        (w, stats(l, w))
    })
}

#[inline(always)]
fn write_exp_serial<T: Real, const K: usize, const FUSED: bool>(
    part: &[T],
    weights: Option<&[f64]>,
    scale: f64,
    out: &mut [T],
    (position, beta): (&impl Fn(f64) -> f64, f64),
    weight: &impl Fn(f64, f64) -> f64,
    stats: &impl Fn(f64, f64) -> [f64; K],
) -> [f64; K] {
    let (mut columns, mut acc) = (Columns::<K>::new(), Lanes::<K>::new());
    // Uninitialised, as the columns are.
    let (mut positions, mut exps) = ([MaybeUninit::<f64>::uninit(); BLOCK], [MaybeUninit::<f64>::uninit(); BLOCK]);
    for (b, ls) in part.chunks(BLOCK).enumerate() {
        let block = b * BLOCK..b * BLOCK + ls.len();
        for ((u, e), &l) in positions.iter_mut().zip(exps.iter_mut()).zip(ls) {
            let x = position(l.to_f64());
            u.write(x);
            e.write(beta * x);
        }
        debug_assert!(ls.len() <= BLOCK);
        // SAFETY: the loop above wrote the first ls.len() elements of both (it zips them with
        // ls), ls.len() <= BLOCK (a chunk of BLOCK) so the slices are in bounds, the two arrays
        // do not overlap, and MaybeUninit<f64> has the size and alignment of f64.
        let (us, es) = unsafe {
            let us = &*(&positions[..ls.len()] as *const [MaybeUninit<f64>] as *const [f64]);
            let es = &mut *(&mut exps[..ls.len()] as *mut [MaybeUninit<f64>] as *mut [f64]);
            (us, es)
        };
        for e in es.iter_mut() {
            *e = exp_nonpositive::<FUSED>(*e);
        }
        let es = &*es;
        let ws = weights.map(|w| &w[block.clone()]);
        if ls.len() % LANES == 0 {
            acc.add_weights(&mut out[block], es, us, ws, scale, weight, stats);
            continue;
        }
        // The batch's last block, of a length that is not a multiple of LANES.
        columns.map(ls, ws, scale, Some(&mut out[block]), &|i, _, p| {
            let w = weight(es[i], p);
            (w, stats(us[i], w))
        });
        acc.add_columns(&columns, ls.len());
    }
    acc.total()
}

#[inline(always)]
fn sum_serial<T: Real, const K: usize>(
    losses: &[T],
    weights: Option<&[f64]>,
    scale: f64,
    term: &impl Fn(f64, f64) -> [f64; K],
) -> [f64; K] {
    fold_blocks(losses, weights, scale, None, &|_, l, p| (0.0, term(l, p)))
}

/// The values added left to right, as `Iterator::sum` adds them (from -0.0, so a sum of -0.0s
/// stays -0.0), but always inlined: the few lanes of a pass, where std's sum, a generic shared
/// across the crate, was at times left out of line and cost more than the additions.
#[inline(always)]
pub(crate) fn sum_in_order(values: &[f64]) -> f64 {
    values.iter().fold(-0.0, |total, &v| total + v)
}

#[inline(always)]
fn add<const K: usize>(mut a: [f64; K], b: [f64; K]) -> [f64; K] {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
    a
}

/// a * b + c, rounded once where FUSED (an FMA instruction), twice elsewhere: `f64::mul_add`
/// outside an FMA-enabled function is a call into libm's software fma.
#[inline(always)]
fn mul_add<const FUSED: bool>(a: f64, b: f64, c: f64) -> f64 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// exp(x) for x <= 0, branch-free so it vectorises (libm's exp does not): x = k ln2 + r with
/// |r| <= ln2/2, exp(r) by a polynomial of degree 11, 2^k built in the exponent bits. Below
/// -708 the result (< 1e-307) is flushed to 0. FUSED takes the multiply-adds as FMAs, fewer
/// operations a vector and a faster exp pass; its results differ from the unfused ones in the
/// last bit.
#[inline(always)]
pub fn exp_nonpositive<const FUSED: bool>(x: f64) -> f64 {
    const ROUND: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52: adding it rounds to an integer
    const LN2_HI: f64 = 0.693_147_180_369_123_8;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let fma = mul_add::<FUSED>;
    let xc = x.max(-708.0);
    let t = fma(xc, std::f64::consts::LOG2_E, ROUND);
    let k = t - ROUND;
    let r = fma(-k, LN2_LO, fma(-k, LN2_HI, xc));
    // The interpolant of exp at the 12 Chebyshev nodes of [-0.3466, 0.3466] (solved in 200-bit
    // arithmetic, then rounded): within 0.08 eps of exp(r) there, where the Taylor series
    // needs degree 12 for 0.75 eps.
    const C: [f64; 12] = [
        1.0,
        1.0,
        0.500_000_000_000_001_9,
        0.166_666_666_666_666_8,
        0.041_666_666_666_487_99,
        0.008_333_333_333_319_592,
        0.001_388_888_895_234_379_7,
        0.000_198_412_698_900_694_31,
        2.480_148_545_126_405_5e-5,
        2.755_724_089_469_107_4e-6,
        2.763_265_113_287_41e-7,
        2.511_004_644_445_748_6e-8,
    ];
    // Estrin's scheme: the pass is bound by the latency of this chain (the FP scheduler holds
    // about two vectors' worth of it), and pairing the terms cuts it from 24 dependent
    // operations (Horner) to 11. The 1 comes last, so that the other terms' rounding errors
    // scale with |exp(r) - 1| < 0.42: within 0.9 eps of exp(r) in all.
    let r2 = r * r;
    let r4 = r2 * r2;
    let r8 = r4 * r4;
    let low = fma(fma(C[3], r, C[2]), r2, C[1] * r);
    let middle = fma(fma(C[7], r, C[6]), r2, fma(C[5], r, C[4]));
    let high = fma(fma(C[11], r, C[10]), r2, fma(C[9], r, C[8]));
    let poly = C[0] + fma(high, r8, fma(middle, r4, low));
    // The low mantissa bits of t hold k; shifted into the exponent field they give 2^k.
    let two_k = f64::from_bits((t.to_bits() << 52).wrapping_add(1023 << 52));
    if x < -708.0 {
        0.0
    } else {
        poly * two_k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both forms, fused and not: which one runs depends on the processor.
    #[test]
    fn exp_matches_libm() {
        fn check(exp: fn(f64) -> f64) {
            let mut x = -720.0;
            while x <= 0.0 {
                let (fast, exact) = (exp(x), x.exp());
                if x >= -708.0 {
                    assert!((fast - exact).abs() <= 1.1 * f64::EPSILON * exact, "exp({x}) = {fast} vs {exact}");
                } else {
                    assert_eq!(fast, 0.0);
                }
                x += 0.000_731;
            }
            assert_eq!(exp(0.0), 1.0);
            assert_eq!(exp(f64::NEG_INFINITY), 0.0);
        }
        check(exp_nonpositive::<true>);
        check(exp_nonpositive::<false>);
    }

    /// The extremes of one plain loop, on losses with ties at the max across blocks and chunks,
    /// signed zeros, a reference with zeros over the largest losses, and NaN or inf on or off
    /// the support.
    #[test]
    fn extremes_match_a_plain_loop() {
        use crate::testing::Rng;
        fn plain(losses: &[f64], reference: &Reference) -> Option<(f64, f64, f64)> {
            if losses.iter().any(|l| !l.is_finite()) {
                return None;
            }
            let on = |i: usize| reference.at(i) > 0.0;
            let max = (0..losses.len()).filter(|&i| on(i)).map(|i| losses[i]).fold(f64::NEG_INFINITY, f64::max);
            let min = (0..losses.len()).filter(|&i| on(i)).map(|i| losses[i]).fold(f64::INFINITY, f64::min);
            let mass = (0..losses.len()).filter(|&i| on(i) && losses[i] == max).map(|i| reference.at(i)).sum();
            Some((max, min, mass))
        }
        let mut rng = Rng::new(31);
        for n in [1, 3, 255, 257, 1000, 70_001, 200_003] {
            let weights: Vec<f64> = (0..n).map(|i| if i % 5 == 0 { 0.0 } else { rng.uniform() }).collect();
            let mut losses: Vec<f64> = (0..n).map(|_| (rng.uniform() * 8.0).floor() - 4.0).collect();
            losses[n / 2] = 0.0;
            losses[n - 1] = -0.0;
            for (i, l) in losses.iter_mut().enumerate() {
                if i % 5 == 0 {
                    *l = 1e300; // off the support of the weighted reference
                }
            }
            let weighted = Reference::weighted(&weights, n).ok(); // None where all are zero (n = 1)
            for reference in [Some(Reference::uniform(n)), weighted].into_iter().flatten() {
                let got = extremes(&losses, &reference).map(|e| (e.max, e.min, e.mass_at_max));
                let (max, min, mass) = plain(&losses, &reference).unwrap();
                let (gmax, gmin, gmass) = got.unwrap();
                assert!(gmax == max && gmin == min, "n {n}: {got:?} vs {max}, {min}");
                assert!((gmass - mass).abs() <= 1e-12 * mass, "n {n}: mass {gmass} vs {mass}");
                for bad in [f64::NAN, -f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                    for at in [0, n / 2, n - 1] {
                        let mut broken = losses.clone();
                        broken[at] = bad;
                        assert!(extremes(&broken, &reference).is_none(), "n {n}: {bad} at {at} not caught");
                    }
                }
            }
        }
    }

    /// The AVX2 kernel of `sum_above` gives every bit of `sum` with the same terms: thresholds
    /// below, inside and above the losses, shifts, a reference with zeros, signed zeros among
    /// the losses, lengths that are not multiples of four, one chunk and several, f64 and f32.
    #[test]
    fn sums_above_a_threshold_match_the_generic_sums() {
        use crate::kernels::batch::Batch;
        use crate::testing::Rng;
        fn check<T: Real>(losses: &[T], reference: Reference) {
            let batch = Batch::new(losses, reference).unwrap();
            let scale = batch.scale();
            for (threshold, shift) in [(f64::NEG_INFINITY, 0.0), (-0.5, -0.25), (-0.3, 0.0), (0.0, 0.0), (-0.0, 1.0)] {
                let generic = sum(losses, &reference, |l, p| {
                    let u = scale.u(l);
                    let on = u > threshold && p > 0.0;
                    let (m, d) = (if on { p } else { 0.0 }, u - shift);
                    [if on { 1.0 } else { 0.0 }, m, m * d, m * d * d, p - m]
                });
                let fast = sum_above(losses, &reference, &scale, threshold, shift);
                let n = losses.len();
                assert_eq!(fast.map(f64::to_bits), generic.map(f64::to_bits), "n {n}, threshold {threshold}");
            }
        }
        let mut rng = Rng::new(51);
        for n in [1, 6, 257, 1000, 70_003] {
            let mut losses: Vec<f64> = (0..n).map(|_| (rng.uniform() * 6.0).floor() * rng.uniform() - 2.0).collect();
            losses[0] = -0.0;
            let narrow: Vec<f32> = losses.iter().map(|&l| l as f32).collect();
            let weights: Vec<f64> = (0..n).map(|i| if i % 5 == 2 { 0.0 } else { rng.uniform() }).collect();
            let weighted = Reference::weighted(&weights, n).ok();
            for reference in [Some(Reference::uniform(n)), weighted].into_iter().flatten() {
                check(&losses, reference);
                check(&narrow, reference);
            }
        }
    }

    #[test]
    fn parallel_sums_match_serial_ones() {
        let losses: Vec<f64> = (0..200_003).map(|i| ((i * 7919) % 1000) as f64 / 997.0).collect();
        let weights: Vec<f64> = (0..200_003).map(|i| (i % 13) as f64).collect();
        for reference in [Reference::uniform(losses.len()), Reference::weighted(&weights, losses.len()).unwrap()] {
            let [s0, s1] = sum(&losses, &reference, |l, p| [p, p * l]);
            let (mut e0, mut e1) = (0.0, 0.0);
            for (i, &l) in losses.iter().enumerate() {
                e0 += reference.at(i);
                e1 += reference.at(i) * l;
            }
            assert!((s0 - e0).abs() < 1e-9 && (s1 - e1).abs() < 1e-9);
        }
    }

    /// Every bit of every answer is the same with 1, 2, 3 or 7 threads: the chunks are fixed
    /// and their results added in order.
    #[test]
    fn answers_do_not_depend_on_the_number_of_threads() {
        use crate::testing::{options, Rng};
        use crate::{Ambiguity, Budget, Options};
        let mut rng = Rng::new(21);
        let n = 200_003;
        let losses: Vec<f64> = (0..n).map(|_| rng.uniform().powi(2) * 5.0).collect();
        let weights = rng.reference(n);
        let sets = [
            (Ambiguity::Kl, Budget::Radius(0.1)),
            (Ambiguity::Kl, Budget::Penalty(0.5)),
            (Ambiguity::Chi2, Budget::Radius(0.5)),
            (Ambiguity::Chi2, Budget::Penalty(1.0)),
            (Ambiguity::Cvar, Budget::Alpha(0.1)),
            (Ambiguity::Tv, Budget::Radius(0.2)),
        ];
        for (ambiguity, budget) in sets {
            for reference in [None, Some(&weights[..])] {
                let opts = Options { reference, ..options(ambiguity, budget) };
                let solve = |threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    let mut q = vec![0.0; n];
                    let solution = pool.install(|| crate::solve(&losses[..], &opts, &mut q)).unwrap();
                    (q, solution.value.to_bits(), solution.dual.map(f64::to_bits))
                };
                let one = solve(1);
                for threads in [2, 3, 7] {
                    assert!(solve(threads) == one, "{ambiguity:?} {budget:?}, {threads} threads");
                }
            }
        }
    }
}
