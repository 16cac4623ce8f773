//! A start for the KL radius solve on all but small batches: the same problem on a histogram
//! of the scaled losses u in [-1, 0], each bin replaced by the two-point distribution with the
//! bin's mass, mean, variance and third moment. The tilt exp(beta u) of the binned problem then
//! matches the true one up to the fourth moment inside each bin, an error of about
//! (beta w)^4 / 384 of each bin's share for bins of width w, so its temperature is within
//! ~1e-11 of the answer for moderate beta: the full solve's first exp pass ends it, either
//! within tolerance or a step so small that the pass that normalises takes it (kl::Fold).
//!
//! One pass over the losses (their bins and four scattered sums each), against the two to
//! eight passes with an exp each from the small-radius guess (three on average over the test
//! distributions of 256 to 2048 losses).

use crate::kernels::batch::{Batch, Reference, Scale};
// The AVX2 kernels exist on x86_64 only; elsewhere the portable passes run.
#[cfg(target_arch = "x86_64")]
use crate::kernels::cpu;
use crate::kernels::passes;
use crate::kernels::real::Real;
use crate::Outcome;

/// Below this many losses the usual first guess costs less than the histogram saves: the
/// histogram and the binned solve cost more than the passes they save on small batches
/// (compare with examples/solve_loop.rs).
pub const BINNED_MIN: usize = 1 << 9;

/// Bins: a power of two near 1/16 of the batch, at most 2^10 (4 sums of f64 each: 32 KB, the
/// size of L1). A power of two makes the bin width 1 / bins exact. 2^12 bins (in L2) made the
/// start 2^8 times closer, which the fold of the last step no longer needs.
fn bin_count(n: usize) -> usize {
    (n / 16).next_power_of_two().min(1 << 10)
}

/// The moments of one bin about its centre c, with the offsets d = (u - c) / width in units
/// of the bin's width (`add_block`): sum p, sum p d, sum p d^2 and sum p d^3. Aligned so that adding a loss's four terms is one AVX2 load-add-store.
#[derive(Clone, Copy, Default)]
#[repr(align(32))]
pub(crate) struct Moments([f64; 4]);

/// The dual variable that `solve` finds on the binned problem (two points a bin, in the units
/// of u), or None below BINNED_MIN or where the binned solve reports none.
pub fn binned_dual<T: Real>(
    batch: &Batch<T>,
    scale: &Scale,
    solve: impl Fn(&Batch<f64>, &mut [f64]) -> Outcome,
) -> Option<f64> {
    let n = batch.len();
    if n < BINNED_MIN {
        return None;
    }
    let bins = bin_count(n);
    let histogram = histogram(batch, scale, bins);
    let (mut points, mut masses) = (Vec::with_capacity(2 * bins), Vec::with_capacity(2 * bins));
    let width = 1.0 / bins as f64; // a power of two: the rescaled moments are exact
    for (b, &Moments([mass, first, second, third])) in histogram.iter().enumerate() {
        let moments = Moments([mass, first * width, second * width * width, third * width * width * width]);
        for (u, mass) in two_points(centre(b, bins), &moments) {
            points.push(u);
            masses.push(mass);
        }
    }
    let binned = Batch::new(&points[..], Reference::weighted(&masses, points.len()).ok()?).ok()?;
    let mut out = vec![0.0; points.len()];
    solve(&binned, &mut out).dual.filter(|d| d.is_finite() && *d > 0.0)
}

fn centre(bin: usize, bins: usize) -> f64 {
    -1.0 + (bin as f64 + 0.5) * (1.0 / bins as f64)
}

/// Elements per block of the histogram pass.
const BLOCK: usize = 256;

/// The bins and offsets of one block, kept from block to block: zeroed for each block of 256,
/// they cost 12 bytes a loss of memset.
struct Scratch {
    index: [u32; BLOCK],
    offset: [f64; BLOCK],
}

/// The histogram of one chunk of losses (ws: their weights, p_scale: the reference's scale),
/// block by block (compiled again for AVX2 below, with AVX2 true: its scatter then takes four
/// losses at a time).
#[inline(always)]
fn chunk<T: Real, const AVX2: bool>(
    ls: &[T],
    ws: Option<&[f64]>,
    p_scale: f64,
    scale: &Scale,
    bins: usize,
) -> Vec<Moments> {
    let mut histogram = vec![Moments::default(); bins];
    let mut scratch = Scratch { index: [0; BLOCK], offset: [0.0; BLOCK] };
    for (k, block) in ls.chunks(BLOCK).enumerate() {
        let ws = ws.map(|w| &w[k * BLOCK..k * BLOCK + block.len()]);
        add_block::<T, AVX2>(&mut histogram, &mut scratch, block, ws, p_scale, scale);
    }
    histogram
}

/// # Safety
/// The processor has AVX2 (`cpu::avx2()` is Some).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn chunk_avx2<T: Real>(ls: &[T], ws: Option<&[f64]>, p_scale: f64, scale: &Scale, bins: usize) -> Vec<Moments> {
    chunk::<T, true>(ls, ws, p_scale, scale, bins)
}

/// Adds one block of losses to the histogram: the bin and the offset from its centre of every
/// loss first, in a loop that vectorises, then the scattered sums.
#[inline(always)]
fn add_block<T: Real, const AVX2: bool>(
    histogram: &mut [Moments],
    scratch: &mut Scratch,
    block: &[T],
    ws: Option<&[f64]>,
    p_scale: f64,
    scale: &Scale,
) {
    let bins = histogram.len();
    let (per_unit, last) = (bins as f64, (bins - 1) as f64);
    let Scratch { index, offset } = scratch;
    for ((i, d), &l) in index.iter_mut().zip(offset.iter_mut()).zip(block) {
        // The position in units of the bin width, 0 at u = -1 and `bins` at the max.
        let t = (scale.u(l.to_f64()) + 1.0) * per_unit;
        // Truncation is the floor here (t >= 0); f64::floor is a call into libm on baseline
        // x86-64, and it took a fifth of the pass. max/min (not clamp) return the bound for a
        // NaN too, which validated losses cannot give.
        let bin = t.max(0.0).min(last);
        debug_assert!((0.0..=last).contains(&bin) && last < i32::MAX as f64);
        // SAFETY: bin is in [0, bins - 1] (max and min return the bound for a NaN too), and
        // bins <= 2^10 fits an i32. The saturating `as` cast compiled to
        // scalar code and cost a third of the pass; converting back from i32, not u32, is one
        // instruction, not three.
        let x = unsafe { bin.to_int_unchecked::<i32>() };
        *i = x as u32;
        // From the unclamped t: the max, at t = bins, lies half a width above the last centre.
        *d = t - (x as f64 + 0.5);
    }
    let (index, offset) = (&index[..block.len()], &offset[..block.len()]);
    #[cfg(target_arch = "x86_64")]
    if AVX2 {
        // SAFETY: AVX2 is set in chunk_avx2 alone, which runs where `cpu::avx2()` is Some; index
        // and offset have the block's length, as the weights do (`chunk`), and every index is
        // below histogram.len() (clamped to bins - 1 above).
        let done = unsafe { cpu::avx2::scatter(histogram, index, offset, ws, p_scale) };
        return scatter(histogram, &index[done..], &offset[done..], ws.map(|w| &w[done..]), p_scale);
    }
    scatter(histogram, index, offset, ws, p_scale);
}

/// Adds each loss's four terms p, p d, p d^2, p d^3 to its bin (d: the offset from the bin's
/// centre in bin widths; p: the loss's weight w times p_scale, or p_scale for the uniform reference).
#[inline(always)]
fn scatter(histogram: &mut [Moments], index: &[u32], offset: &[f64], ws: Option<&[f64]>, p_scale: f64) {
    for (k, (&i, &d)) in index.iter().zip(offset).enumerate() {
        // p = 0 adds nothing, wherever its (clamped) bin is.
        let p = ws.map_or(p_scale, |w| w[k] * p_scale);
        let pd = p * d;
        let h = &mut histogram[i as usize].0;
        let terms = [p, pd, pd * d, pd * d * d];
        for j in 0..4 {
            h[j] += terms[j];
        }
    }
}

/// The moments of every bin, one histogram per chunk, added up.
fn histogram<T: Real>(batch: &Batch<T>, scale: &Scale, bins: usize) -> Vec<Moments> {
    let p_scale = batch.reference.scale();
    passes::fold_chunks(
        batch.losses,
        &batch.reference,
        |ls, ws| {
            #[cfg(target_arch = "x86_64")]
            if cpu::avx2().is_some() {
                // SAFETY: `cpu::avx2()` is Some: the processor has AVX2 and FMA, and no switch forces the portable build.
                return unsafe { chunk_avx2(ls, ws, p_scale, scale, bins) };
            }
            chunk::<T, false>(ls, ws, p_scale, scale, bins)
        },
        |mut a, b| {
            for (x, y) in a.iter_mut().zip(&b) {
                for j in 0..4 {
                    x.0[j] += y.0[j];
                }
            }
            a
        },
    )
}

/// The two-point distribution (or one point, or none) with the bin's mass, mean, variance and
/// third central moment: in standard units the points a < 0 < b with a + b = skewness and
/// a b = -1, weighted b / (b - a) and -a / (b - a).
fn two_points(centre: f64, moments: &Moments) -> impl Iterator<Item = (f64, f64)> {
    let [mass, first, second, third] = moments.0;
    let mut points = [(0.0, 0.0); 2];
    let mut count = 0;
    if mass > 0.0 {
        let (m1, m2, m3) = (first / mass, second / mass, third / mass);
        let variance = m2 - m1 * m1;
        let mean = centre + m1;
        // Below this, the spread is rounding noise in the moments (of order eps times the
        // squared bin width): one point at the mean.
        if variance <= 1e-12 * m2 || !variance.is_finite() {
            points[0] = (mean, mass);
            count = 1;
        } else {
            let central_third = m3 - 3.0 * m1 * m2 + 2.0 * m1 * m1 * m1;
            let skewness = central_third / (variance * variance.sqrt());
            let root = (skewness * skewness + 4.0).sqrt();
            let (a, b) = ((skewness - root) / 2.0, (skewness + root) / 2.0);
            let sd = variance.sqrt();
            points = [(mean + sd * a, mass * b / (b - a)), (mean + sd * b, mass * -a / (b - a))];
            count = 2;
        }
    }
    points.into_iter().take(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_points_keep_the_first_four_moments() {
        let centre = -0.5;
        let samples = [(-0.5004, 0.2), (-0.4998, 0.1), (-0.4997, 0.3), (-0.5001, 0.4)];
        let mut moments = [0.0; 4];
        for &(u, p) in &samples {
            let d: f64 = u - centre;
            moments = [moments[0] + p, moments[1] + p * d, moments[2] + p * d * d, moments[3] + p * d * d * d];
        }
        let points: Vec<(f64, f64)> = two_points(centre, &Moments(moments)).collect();
        assert_eq!(points.len(), 2);
        for k in 0..4 {
            let exact: f64 = samples.iter().map(|&(u, p)| p * (u - centre).powi(k)).sum();
            let binned: f64 = points.iter().map(|&(u, p)| p * (u - centre).powi(k)).sum();
            // The points are stored as u, not as offsets from the centre: eps |centre| of
            // rounding in each, times the k-th power's slope over offsets of 4e-4.
            let tol = 4.0 * f64::EPSILON * (k.max(1) as f64) * 4e-4_f64.powi(k - 1).min(1.0);
            assert!((exact - binned).abs() <= tol, "moment {k}: {exact} vs {binned}");
        }
    }

    /// The AVX2 scatter gives every bit of the plain one, with and without weights, on lengths
    /// that are not multiples of four and with runs of one bin (a chain of adds to one place).
    #[test]
    fn the_vectorised_scatter_matches_the_plain_one() {
        #[cfg(target_arch = "x86_64")]
        if cpu::avx2().is_some() {
            let mut rng = crate::testing::Rng::new(13);
            let bins = 64;
            for len in [1, 4, 7, 256] {
                let index: Vec<u32> =
                    (0..len).map(|k| if k % 9 < 3 { 5 } else { (rng.uniform() * bins as f64) as u32 }).collect();
                let offset: Vec<f64> = (0..len).map(|_| (rng.uniform() - 0.5) / bins as f64).collect();
                let weights: Vec<f64> = (0..len).map(|k| if k % 4 == 1 { 0.0 } else { rng.uniform() }).collect();
                for ws in [None, Some(&weights[..])] {
                    let (mut plain, mut wide) = (vec![Moments::default(); bins], vec![Moments::default(); bins]);
                    scatter(&mut plain, &index, &offset, ws, 0.37);
                    // SAFETY: AVX2 is there; index, offset and weights have one length, and every
                    // index is below bins.
                    let done = unsafe { cpu::avx2::scatter(&mut wide, &index, &offset, ws, 0.37) };
                    scatter(&mut wide, &index[done..], &offset[done..], ws.map(|w| &w[done..]), 0.37);
                    let bits = |h: &[Moments]| h.iter().flat_map(|m| m.0.map(f64::to_bits)).collect::<Vec<_>>();
                    assert_eq!(bits(&plain), bits(&wide), "len {len}, weighted {}", ws.is_some());
                }
            }
        }
    }

    #[test]
    fn a_bin_of_one_value_is_one_point_and_an_empty_bin_none() {
        let d = 1e-5_f64;
        let points: Vec<(f64, f64)> =
            two_points(0.25, &Moments([0.5, 0.5 * d, 0.5 * d * d, 0.5 * d * d * d])).collect();
        assert_eq!(points.len(), 1);
        assert!((points[0].0 - (0.25 + d)).abs() < 1e-15 && points[0].1 == 0.5);
        assert_eq!(two_points(0.25, &Moments::default()).count(), 0);
    }
}

#[cfg(test)]
mod starts {
    use super::*;
    use crate::testing::{check_invariants, normalised, options, solve_f64, Rng};
    use crate::{kl, Ambiguity, Budget, Options};

    fn squared_normals(rng: &mut Rng, n: usize) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let z = (-2.0 * rng.uniform().max(1e-300).ln()).sqrt() * (std::f64::consts::TAU * rng.uniform()).cos();
                z * z
            })
            .collect()
    }

    fn kl_divergence(q: &[f64], p: &[f64]) -> f64 {
        q.iter().zip(p).filter(|(&a, _)| a > 0.0).map(|(&a, &b)| a * (a / b).ln()).sum()
    }

    #[test]
    fn small_batches_are_not_binned() {
        let losses: Vec<f64> = (0..BINNED_MIN - 1).map(|i| i as f64).collect();
        let batch = Batch::new(&losses[..], Reference::uniform(losses.len())).unwrap();
        assert_eq!(binned_dual(&batch, &batch.scale(), |_, _| unreachable!()), None);
    }

    /// The binned temperature is within 1e-9 of the answer on light and heavy tails from 2^12
    /// losses on (256 bins or more; 1e-5 at 512 losses, 32 bins: 1.9e-6 seen at radius 1), and
    /// the solve from it ends in one exp pass, where a start from a strided sample took 3 to 4
    /// and the small-radius expansion 5 to 8 on squared normals.
    #[test]
    fn the_binned_temperature_starts_kl_at_the_answer() {
        let mut rng = Rng::new(11);
        for n in [BINNED_MIN, 1 << 12, 1 << 14, 1 << 17] {
            let uniform: Vec<f64> = (0..n).map(|_| rng.uniform()).collect();
            let heavy = squared_normals(&mut rng, n);
            for losses in [&uniform, &heavy] {
                for radius in [1e-4, 1e-2, 0.1, 1.0] {
                    let (q, solution) = solve_f64(losses, &options(Ambiguity::Kl, Budget::Radius(radius)));
                    check_invariants(losses, None, &q, &solution);
                    let kl = kl_divergence(&q, &vec![1.0 / n as f64; n]);
                    assert!((kl - radius).abs() <= 1e-9 * radius, "n {n}: KL {kl} for radius {radius}");
                    assert!(solution.iterations == 1, "n {n}, radius {radius}: {solution:?}");
                    let batch = Batch::new(&losses[..], Reference::uniform(n)).unwrap();
                    let scale = batch.scale();
                    let tau = binned_dual(&batch, &scale, |b, o| kl::solve_radius(b, radius, 1e-12, o)).unwrap();
                    let exact = scale.to_u_units(solution.dual.unwrap());
                    let accuracy = if n >= 1 << 12 { 1e-9 } else { 1e-5 };
                    assert!((tau / exact - 1.0).abs() < accuracy, "n {n}, radius {radius}: binned {tau} vs {exact}");
                }
            }
        }
    }

    /// A reference with zeros (and losses far outside the support's range where p is zero):
    /// those points land in the clamped end bins with no mass; the same answer.
    #[test]
    fn a_reference_with_zeros_bins_its_support_only() {
        let mut rng = Rng::new(12);
        let n = 1 << 13;
        let mut losses = squared_normals(&mut rng, n);
        let reference: Vec<f64> = (0..n).map(|i| if i % 3 == 0 { 0.0 } else { 1.0 + rng.uniform() }).collect();
        losses[0] = 1e6;
        losses[3] = -1e6;
        let opts = Options { reference: Some(&reference), ..options(Ambiguity::Kl, Budget::Radius(0.1)) };
        let (q, solution) = solve_f64(&losses, &opts);
        check_invariants(&losses, Some(&reference), &q, &solution);
        assert!((kl_divergence(&q, &normalised(&reference)) - 0.1).abs() <= 1e-10);
        assert!(solution.iterations <= 2, "{solution:?}");
    }
}
