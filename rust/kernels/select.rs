//! Weighted selection: the threshold where the mass of the largest values reaches a target,
//! in expected linear time, no full sort. CVaR and TV need it.
//!
//! Large batches first bin the losses on the support into a histogram of their range (one
//! pass), find the bin where the mass crosses the target, and select exactly among the losses
//! of that bin only (a second pass collects them); small batches select among all of them.

use std::cmp::Ordering::Equal;

use crate::kernels::batch::Batch;
// The AVX2 kernels exist on x86_64 only; elsewhere the portable passes run.
#[cfg(target_arch = "x86_64")]
use crate::kernels::cpu;
use crate::kernels::passes;
use crate::kernels::real::Real;

/// Below this many losses the histogram costs more than it saves.
const HISTOGRAM_MIN: usize = 1024;

/// The histogram's size cap: 32 KB of f64 stays in L1. Far larger, the histogram pass waits
/// on its scattered stores; at this size the crossing bin of 2^20 losses holds a few hundred,
/// which the exact selection handles quickly.
const MAX_BINS: usize = 1 << 12;

/// The weighted upper quantile of the values v_i = sign * l_i (sign = 1 for the largest losses,
/// -1 for the smallest) at mass `target`, with the mass of p strictly beyond and at it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantile {
    pub value: f64,
    pub beyond: f64,
    pub at: f64,
}

pub fn quantile<T: Real>(batch: &Batch<T>, target: f64, sign: f64) -> Quantile {
    let n = batch.len();
    if n < HISTOGRAM_MIN && batch.reference.is_uniform() {
        return uniform_quantile(batch, target, sign);
    }
    let (low, high) = if sign > 0.0 { (batch.min, batch.max) } else { (-batch.max, -batch.min) };
    let mut beyond_bin = 0.0;
    let mut items = if n < HISTOGRAM_MIN || high <= low {
        collect(batch, sign, None)
    } else {
        let bins = Bins::new(low, high, (n / 8).next_power_of_two().min(MAX_BINS));
        let histogram = histogram(batch, sign, bins);
        let mut crossing = 0;
        for b in (0..histogram.len()).rev() {
            if beyond_bin + histogram[b] >= target || b == 0 {
                crossing = b;
                break;
            }
            beyond_bin += histogram[b];
        }
        collect(batch, sign, Some((bins, crossing)))
    };
    let value = upper_quantile(&mut items, target - beyond_bin);
    let (mut beyond, mut at) = (beyond_bin, 0.0);
    for &(v, mass) in &items {
        if v > value {
            beyond += mass;
        } else if v == value {
            at += mass;
        }
    }
    Quantile { value, beyond, at }
}

/// A small batch under the uniform reference: every mass is 1/n, so the quantile is the k-th
/// largest value, k the fewest items whose mass reaches the target. Pairs with their masses,
/// collected through the chunked passes and selected among, took half of a TV solve at n = 64.
fn uniform_quantile<T: Real>(batch: &Batch<T>, target: f64, sign: f64) -> Quantile {
    #[cfg(target_arch = "x86_64")]
    if cpu::avx2().is_some() {
        // SAFETY: `cpu::avx2()` is Some: the processor has AVX2 and FMA, and no switch forces the portable build.
        return unsafe { uniform_quantile_avx2(batch, target, sign) };
    }
    uniform_quantile_serial(batch, target, sign)
}

#[inline(always)]
fn uniform_quantile_serial<T: Real>(batch: &Batch<T>, target: f64, sign: f64) -> Quantile {
    let mass = batch.reference.scale();
    let n = batch.len();
    let mut k = ((target / mass).ceil() as usize).clamp(1, n);
    // The division may round across an integer: k is the fewest items with k / n >= target.
    if k < n && (k as f64) * mass < target {
        k += 1;
    } else if k > 1 && ((k - 1) as f64) * mass >= target {
        k -= 1;
    }
    let value = if k <= TOP_MAX {
        // The k-th largest is the k-th smallest of the negated values.
        -kth_smallest(batch.losses, -sign, k)
    } else if n - k < TOP_MAX {
        // The k-th largest is the (n - k + 1)-th smallest.
        kth_smallest(batch.losses, sign, n - k + 1)
    } else {
        let mut values: Vec<f64> = batch.losses.iter().map(|&l| sign * l.to_f64()).collect();
        *values.select_nth_unstable_by(k - 1, |a, b| b.partial_cmp(a).unwrap_or(Equal)).1
    };
    let (mut beyond, mut at) = (0_usize, 0_usize);
    for &l in batch.losses {
        let v = sign * l.to_f64();
        beyond += usize::from(v > value);
        at += usize::from(v == value);
    }
    Quantile { value, beyond: beyond as f64 * mass, at: at as f64 * mass }
}

/// # Safety
/// The processor has AVX2 (`cpu::avx2()` is Some).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn uniform_quantile_avx2<T: Real>(batch: &Batch<T>, target: f64, sign: f64) -> Quantile {
    uniform_quantile_serial(batch, target, sign)
}

/// The largest k that `kth_smallest` keeps on the stack.
const TOP_MAX: usize = 16;

/// The k-th smallest of the values factor * l (1 <= k <= TOP_MAX, k <= their count; factor is
/// +-1, so the products are exact), with no branch on the values: at n = 64 an insertion
/// into the k smallest, branching on each value, mispredicted often enough to take most of a
/// CVaR or TV solve.
#[inline(always)]
fn kth_smallest<T: Real>(losses: &[T], factor: f64, k: usize) -> f64 {
    debug_assert!((1..=TOP_MAX).contains(&k) && k <= losses.len());
    if k <= TOP_MAX / 2 {
        kth_smallest_in::<T, { TOP_MAX / 2 }>(losses, factor, k)
    } else {
        kth_smallest_in::<T, TOP_MAX>(losses, factor, k)
    }
}

/// Values a lane of `kth_smallest_in` takes: value i goes to lane i mod LANES.
const LANES: usize = 4;

/// `kth_smallest` keeping K >= k values a lane. Each of four lanes keeps its K smallest values
/// in order, every new value passed through a compare-exchange network (kept[i] = min(kept[i],
/// max(kept[i - 1], v)), which inserts v at its place and drops the largest): min and max
/// only, the same in every lane, so the four lanes are one vector. The k-th smallest of all
/// is then the k-th step of a merge of the four sorted lanes.
#[inline(always)]
fn kth_smallest_in<T: Real, const K: usize>(losses: &[T], factor: f64, k: usize) -> f64 {
    debug_assert!(k <= K);
    // `if a < b { a } else { b }`, not f64::min: the values are finite, and this is one
    // instruction (minpd) where f64::min's care for NaN is three.
    let min = |a: f64, b: f64| if a < b { a } else { b };
    let max = |a: f64, b: f64| if a > b { a } else { b };
    let mut kept = [[f64::INFINITY; LANES]; K];
    let mut insert = |v: [f64; LANES]| {
        for i in (1..K).rev() {
            for lane in 0..LANES {
                kept[i][lane] = min(kept[i][lane], max(kept[i - 1][lane], v[lane]));
            }
        }
        for lane in 0..LANES {
            kept[0][lane] = min(kept[0][lane], v[lane]);
        }
    };
    let mut vectors = losses.chunks_exact(LANES);
    for ls in &mut vectors {
        insert(std::array::from_fn(|lane| factor * ls[lane].to_f64()));
    }
    // The last values, padded with +inf, which no lane keeps before a finite value.
    let rest = vectors.remainder();
    if !rest.is_empty() {
        insert(std::array::from_fn(|lane| rest.get(lane).map_or(f64::INFINITY, |l| factor * l.to_f64())));
    }
    // Merge: k times, take the smallest head of the lanes and advance that lane. A lane is
    // advanced at most k - 1 <= K - 1 times before the last take, so heads stay in bounds.
    let mut head = [0_usize; LANES];
    let mut value = f64::INFINITY;
    for _ in 0..k {
        let at = |lane: usize| kept[head[lane].min(K - 1)][lane];
        let (a, b) = ((at(0), 0), (at(1), 1));
        let first = if b.0 < a.0 { b } else { a };
        let (c, d) = ((at(2), 2), (at(3), 3));
        let second = if d.0 < c.0 { d } else { c };
        let (smallest, lane) = if second.0 < first.0 { second } else { first };
        value = smallest;
        head[lane] += 1;
    }
    value
}

/// Equal bins over [low, high]; values outside go to the first or last bin.
#[derive(Clone, Copy)]
struct Bins {
    low: f64,
    per_unit: f64,
    last: f64,
}

impl Bins {
    fn new(low: f64, high: f64, count: usize) -> Self {
        // Halved so that the range stays finite for losses near +-1e308.
        Bins { low: low * 0.5, per_unit: count as f64 / (high * 0.5 - low * 0.5), last: (count - 1) as f64 }
    }

    fn count(&self) -> usize {
        self.last as usize + 1
    }

    #[inline(always)]
    fn of(&self, v: f64) -> usize {
        let x = ((v * 0.5 - self.low) * self.per_unit).clamp(0.0, self.last);
        debug_assert!((0.0..=self.last).contains(&x) && self.last < i32::MAX as f64);
        // SAFETY: x is in [0, count - 1]: clamped, and not NaN (v and low are finite, and
        // per_unit is finite for the range of a batch whose extremes differ); count fits an i32.
        unsafe { x.to_int_unchecked::<i32>() as usize }
    }
}

/// Losses per block of the passes below: their bins are found in a loop of their own, which
/// vectorises, and kept in L1 for the scattered adds or the scan that follows.
const BLOCK: usize = 256;

/// The bins of the values sign * l of a block (at most BLOCK losses).
#[inline(always)]
fn bin_block<'a, T: Real>(block: &[T], sign: f64, bins: Bins, index: &'a mut [u32; BLOCK]) -> &'a [u32] {
    for (k, &l) in index.iter_mut().zip(block) {
        *k = bins.of(sign * l.to_f64()) as u32;
    }
    &index[..block.len()]
}

/// The mass of p in each bin of the values sign * l (one histogram per chunk, added up). The
/// bin numbers of a block first, then the scattered adds: fused, and with the bins' parameters
/// behind the closure's references, the compiler reloads them after every store. Under the uniform reference the bins count the losses, and the counts
/// times 1/n are the masses.
fn histogram<T: Real>(batch: &Batch<T>, sign: f64, bins: Bins) -> Vec<f64> {
    let scale = batch.reference.scale();
    let mut histogram = passes::fold_chunks(
        batch.losses,
        &batch.reference,
        |ls, ws| {
            #[cfg(target_arch = "x86_64")]
            if cpu::avx2().is_some() {
                // SAFETY: `cpu::avx2()` is Some: the processor has AVX2 and FMA, and no switch forces the portable build.
                return unsafe { histogram_chunk_avx2(ls, ws, scale, sign, bins) };
            }
            histogram_chunk(ls, ws, scale, sign, bins)
        },
        |mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
            a
        },
    );
    if batch.reference.is_uniform() {
        histogram.iter_mut().for_each(|m| *m *= scale);
    }
    histogram
}

/// The histogram of one chunk: counts under the uniform reference (ws None), masses otherwise.
#[inline(always)]
fn histogram_chunk<T: Real>(ls: &[T], ws: Option<&[f64]>, scale: f64, sign: f64, bins: Bins) -> Vec<f64> {
    let mut histogram = vec![0.0; bins.count()];
    // The bounds checks would cost as much as a good part of the adds.
    let add = |histogram: &mut [f64], k: u32, mass: f64| {
        debug_assert!((k as usize) < histogram.len());
        // SAFETY: k comes from `Bins::of`, which clamps to [0, count - 1], and the histogram
        // has count entries.
        unsafe { *histogram.get_unchecked_mut(k as usize) += mass };
    };
    let mut index = [0_u32; BLOCK];
    for (b, block) in ls.chunks(BLOCK).enumerate() {
        let index = bin_block(block, sign, bins, &mut index);
        match ws {
            None => index.iter().for_each(|&k| add(&mut histogram, k, 1.0)),
            // p = 0 adds nothing, wherever its (clamped) bin is.
            Some(ws) => {
                let ws = &ws[b * BLOCK..b * BLOCK + block.len()];
                index.iter().zip(ws).for_each(|(&k, &w)| add(&mut histogram, k, w * scale));
            }
        }
    }
    histogram
}

/// # Safety
/// The processor has AVX2 (`cpu::avx2()` is Some).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn histogram_chunk_avx2<T: Real>(ls: &[T], ws: Option<&[f64]>, scale: f64, sign: f64, bins: Bins) -> Vec<f64> {
    histogram_chunk(ls, ws, scale, sign, bins)
}

/// (sign * l_i, p_i) for every point of the support (`keep` None: the small batches, where the
/// chunk's length is the capacity; growing the vector by doubling cost a sixth of a TV solve
/// at n = 64), or for those whose value falls in the bin `keep` of `bins`.
fn collect<T: Real>(batch: &Batch<T>, sign: f64, keep: Option<(Bins, usize)>) -> Vec<(f64, f64)> {
    let points = Points { sign, scale: batch.reference.scale() };
    passes::fold_chunks(
        batch.losses,
        &batch.reference,
        |ls, ws| {
            let Some((bins, crossing)) = keep else {
                let mut kept = Vec::with_capacity(ls.len());
                kept.extend((0..ls.len()).map(|k| points.at(ls, ws, k)).filter(|&(_, p)| p > 0.0));
                return kept;
            };
            #[cfg(target_arch = "x86_64")]
            if cpu::avx2().is_some() {
                // SAFETY: `cpu::avx2()` is Some: the processor has AVX2 and FMA, and no switch forces the portable build.
                return unsafe { collect_bin_avx2(ls, ws, points, (bins, crossing)) };
            }
            collect_bin(ls, ws, points, (bins, crossing))
        },
        |mut a, b| {
            a.extend(b);
            a
        },
    )
}

/// The point (sign * l_k, p_k) of loss k of a chunk: `scale` normalises the raw weights.
#[derive(Clone, Copy)]
struct Points {
    sign: f64,
    scale: f64,
}

impl Points {
    #[inline(always)]
    fn at<T: Real>(self, ls: &[T], ws: Option<&[f64]>, k: usize) -> (f64, f64) {
        (self.sign * ls[k].to_f64(), ws.map_or(self.scale, |w| w[k] * self.scale))
    }
}

/// The points of the support of one chunk in the bin `crossing`. A block is scanned for them
/// only where one of its bins is that one: the crossing bin holds few points, and a filter
/// over every loss would cost a full pass.
#[inline(always)]
fn collect_bin<T: Real>(
    ls: &[T],
    ws: Option<&[f64]>,
    points: Points,
    (bins, crossing): (Bins, usize),
) -> Vec<(f64, f64)> {
    let mut kept = Vec::with_capacity(64);
    let mut index = [0_u32; BLOCK];
    for (b, block) in ls.chunks(BLOCK).enumerate() {
        let index = bin_block(block, points.sign, bins, &mut index);
        // One bit a loss, set where its bin is the crossing one: the comparisons vectorise,
        // and only the set bits are visited. Through `filter` and `extend` over every loss the
        // scan costs a full pass even where each block holds only a few points of the bin (as
        // in a dense lower tail, which TV selects from).
        for (w, word) in index.chunks(64).enumerate() {
            let mut bits =
                word.iter().enumerate().fold(0_u64, |bits, (j, &k)| bits | (u64::from(k as usize == crossing) << j));
            while bits != 0 {
                let k = b * BLOCK + w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let (v, p) = points.at(ls, ws, k);
                if p > 0.0 {
                    kept.push((v, p));
                }
            }
        }
    }
    kept
}

/// # Safety
/// The processor has AVX2 (`cpu::avx2()` is Some).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn collect_bin_avx2<T: Real>(
    ls: &[T],
    ws: Option<&[f64]>,
    points: Points,
    bin: (Bins, usize),
) -> Vec<(f64, f64)> {
    collect_bin(ls, ws, points, bin)
}

/// Below this size the remaining items are sorted outright.
const SORT_BELOW: usize = 32;

/// The value v among `items` (value, mass) with mass{value > v} < target <= mass{value >= v}:
/// the weighted upper quantile at mass `target`. Reorders `items`; needs 0 < target and at
/// least one item. A target beyond the total mass (rounding) gives the smallest value.
fn upper_quantile(items: &mut [(f64, f64)], mut target: f64) -> f64 {
    let mut items = items;
    let mut first = true;
    loop {
        if items.len() <= SORT_BELOW {
            items.sort_unstable_by(descending);
            let mut above = 0.0;
            for &(value, mass) in items.iter() {
                above += mass;
                if above >= target {
                    return value;
                }
            }
            return items.last().map_or(f64::NEG_INFINITY, |&(v, _)| v);
        }
        // The first selection is at the count the target takes at the items' mean mass, plus
        // one: a small target (CVaR's alpha, TV's radius) then leaves a few items to sort, not
        // half of them. Later ones halve, so skewed masses cost at most one selection more.
        let mid = if first { count_guess(items, target) } else { items.len() / 2 };
        first = false;
        let (upper, pivot, lower) = items.select_nth_unstable_by(mid, descending);
        let upper_mass: f64 = upper.iter().map(|&(_, m)| m).sum();
        if upper_mass >= target {
            // Items equal to the pivot may sit in `upper`: they are searched there.
            items = upper;
        } else if upper_mass + pivot.1 >= target {
            return pivot.0;
        } else {
            target -= upper_mass + pivot.1;
            if lower.is_empty() {
                return pivot.0;
            }
            items = lower;
        }
    }
}

/// Larger values first. The values are finite (validated losses), so partial_cmp orders them
/// without total_cmp's bit twiddling; -0 and +0 tie, as they do in the == that counts the mass at the quantile.
fn descending(a: &(f64, f64), b: &(f64, f64)) -> std::cmp::Ordering {
    b.0.partial_cmp(&a.0).unwrap_or(Equal)
}

/// How many items the target's mass takes at their mean mass, plus one, capped at the middle.
fn count_guess(items: &[(f64, f64)], target: f64) -> usize {
    let total: f64 = items.iter().map(|&(_, m)| m).sum();
    let count = (target / total * items.len() as f64).ceil();
    // A NaN count (a total of 0) also takes the middle.
    if count < (items.len() / 2) as f64 {
        count as usize + 1
    } else {
        items.len() / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(items: &[(f64, f64)], target: f64) -> f64 {
        let mut sorted = items.to_vec();
        sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut above = 0.0;
        for &(v, m) in &sorted {
            above += m;
            if above >= target {
                return v;
            }
        }
        sorted.last().unwrap().0
    }

    /// The uniform shortcut against the general path (the same batch with equal weights given
    /// explicitly), with ties, at random targets and at the multiples of 1/n, where rounding
    /// decides between two neighbouring values that both satisfy the definition.
    #[test]
    fn the_uniform_shortcut_matches_the_weighted_selection() {
        use crate::kernels::batch::Reference;
        let mut rng = crate::testing::Rng::new(777);
        let mut next = || rng.uniform();
        for n in 1..90 {
            let losses: Vec<f64> = (0..n).map(|_| (next() * 8.0).floor() - 3.0).collect();
            let ones = vec![1.0; n];
            let uniform = Batch::new(&losses, Reference::uniform(n)).unwrap();
            let weighted = Batch::new(&losses, Reference::weighted(&ones, n).unwrap()).unwrap();
            // The multiples of 1/n, each also one ulp up, then random targets.
            let multiples = (1..=n).map(|j| j as f64 / n as f64);
            let targets: Vec<f64> = multiples
                .clone()
                .chain(multiples.map(|t| f64::from_bits(t.to_bits() + 1)))
                .chain((0..5).map(|_| next().max(1e-9)))
                .collect();
            for (t, &target) in targets.iter().enumerate() {
                for sign in [1.0, -1.0] {
                    let q = quantile(&uniform, target, sign);
                    let mass = |keep: &dyn Fn(f64) -> bool| {
                        losses.iter().filter(|&&l| keep(sign * l)).count() as f64 * (1.0 / n as f64)
                    };
                    assert_eq!(q.beyond, mass(&|v| v > q.value), "n {n} target {target}");
                    assert_eq!(q.at, mass(&|v| v == q.value), "n {n} target {target}");
                    // A target beyond the total mass (by rounding) takes every value.
                    let reached = if target > mass(&|_| true) {
                        losses.iter().all(|&l| sign * l >= q.value)
                    } else {
                        target <= mass(&|v| v >= q.value)
                    };
                    assert!(q.beyond < target && reached, "n {n} target {target}");
                    if t >= 2 * n {
                        assert_eq!(q.value, quantile(&weighted, target, sign).value, "n {n} target {target}");
                    }
                }
            }
        }
    }

    /// The branch-free k-th smallest against a sort: every k it takes, every remainder of n by
    /// the four lanes, ties and continuous values, both signs, float64 and float32 losses.
    #[test]
    fn the_kth_smallest_matches_a_sort() {
        let mut rng = crate::testing::Rng::new(2026);
        for n in 1..80 {
            let tied: Vec<f64> = (0..n).map(|_| (rng.uniform() * 5.0).floor() - 2.0).collect();
            let spread: Vec<f64> = (0..n).map(|_| (rng.uniform() - 0.3) * 1e3).collect();
            for losses in [&tied, &spread] {
                let narrow: Vec<f32> = losses.iter().map(|&l| l as f32).collect();
                for factor in [1.0, -1.0] {
                    let mut sorted: Vec<f64> = losses.iter().map(|&l| factor * l).collect();
                    sorted.sort_by(f64::total_cmp);
                    let mut sorted_narrow: Vec<f64> = narrow.iter().map(|&l| factor * f64::from(l)).collect();
                    sorted_narrow.sort_by(f64::total_cmp);
                    for k in 1..=TOP_MAX.min(n) {
                        assert_eq!(kth_smallest(losses.as_slice(), factor, k), sorted[k - 1], "n {n} k {k}");
                        assert_eq!(kth_smallest(narrow.as_slice(), factor, k), sorted_narrow[k - 1], "n {n} k {k}");
                    }
                }
            }
        }
    }

    /// The histogram path (1,024 losses on), whose crossing bin is collected block by block,
    /// against a full sort: skewed losses that crowd one bin across every block, ties, a
    /// reference with zeros, both tails, on one and on several chunks.
    #[test]
    fn the_histogram_path_matches_a_full_sort() {
        use crate::kernels::batch::{Batch, Reference};
        let mut rng = crate::testing::Rng::new(41);
        for n in [HISTOGRAM_MIN, 5003, 70_001] {
            let squared: Vec<f64> = (0..n).map(|_| (rng.uniform() * 3.0).powi(4)).collect();
            let tied: Vec<f64> = (0..n).map(|_| (rng.uniform() * 6.0).floor()).collect();
            let weights: Vec<f64> = (0..n).map(|i| if i % 7 == 3 { 0.0 } else { rng.uniform() }).collect();
            for losses in [&squared, &tied] {
                for p in [Reference::uniform(n), Reference::weighted(&weights, n).unwrap()] {
                    let batch = Batch::new(&losses[..], p).unwrap();
                    for sign in [1.0, -1.0] {
                        let items: Vec<(f64, f64)> =
                            (0..n).map(|i| (sign * losses[i], p.at(i))).filter(|&(_, p)| p > 0.0).collect();
                        for target in [1e-3, 0.05, 0.3, 0.9] {
                            let got = quantile(&batch, target, sign);
                            assert_eq!(got.value, reference(&items, target), "n {n}, sign {sign}, {target}");
                            let beyond: f64 = items.iter().filter(|x| x.0 > got.value).map(|x| x.1).sum();
                            let at: f64 = items.iter().filter(|x| x.0 == got.value).map(|x| x.1).sum();
                            assert!((got.beyond - beyond).abs() <= 1e-12 && (got.at - at).abs() <= 1e-12);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn matches_a_full_sort() {
        let mut state = 12345_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for trial in 0..300 {
            let n = 1 + trial % 157;
            // Every other trial puts nearly all the mass on the smallest values, so that the
            // first selection's guess (at the mean mass) falls short.
            let skewed = trial % 2 == 1;
            let items: Vec<(f64, f64)> = (0..n)
                .map(|_| {
                    let value = (next() * 10.0).floor();
                    (value, if skewed && value >= 3.0 { 1e-9 * next() } else { next() })
                })
                .collect();
            let total: f64 = items.iter().map(|x| x.1).sum();
            let target = total * next().max(1e-3);
            let mut work = items.clone();
            assert_eq!(upper_quantile(&mut work, target), reference(&items, target));
        }
    }
}
