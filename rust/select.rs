//! Weighted selection: the threshold where the mass of the largest values reaches a target,
//! in expected linear time, no full sort. CVaR and TV need it.
//!
//! Large batches first bin the losses on the support into a histogram of their range (one
//! pass), find the bin where the mass crosses the target, and select exactly among the losses
//! of that bin only (a second pass collects them); small batches select among all of them.

use crate::batch::Batch;
use crate::real::Real;

/// Below this many losses the histogram costs more than it saves.
const HISTOGRAM_MIN: usize = 1024;

/// The weighted upper quantile of the values v_i = sign * l_i (sign = 1 for the largest losses,
/// -1 for the smallest) at mass `target`, with the mass of p strictly beyond and at it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantile {
    pub value: f64,
    pub beyond: f64,
    pub at: f64,
}

pub fn quantile<T: Real>(batch: &Batch<T>, target: f64, sign: f64) -> Quantile {
    let p = &batch.reference;
    let n = batch.len();
    let (low, high) = if sign > 0.0 { (batch.min, batch.max) } else { (-batch.max, -batch.min) };
    let mut beyond_bin = 0.0;
    let mut items: Vec<(f64, f64)> = if n < HISTOGRAM_MIN || !(high > low) {
        let mut all = Vec::with_capacity(n);
        for (i, &l) in batch.losses.iter().enumerate() {
            let mass = p.at(i);
            if mass > 0.0 {
                all.push((sign * l.to_f64(), mass));
            }
        }
        all
    } else {
        let bins = (n / 8).next_power_of_two().min(1 << 16);
        // Halved so that the range stays finite for losses near +-1e308.
        let per_unit = bins as f64 / (high * 0.5 - low * 0.5);
        let last = (bins - 1) as f64;
        let bin_of = |v: f64| {
            let x = ((v * 0.5 - low * 0.5) * per_unit).clamp(0.0, last);
            // SAFETY: x is finite and in [0, bins - 1] (clamped; v and low are finite).
            unsafe { x.to_int_unchecked::<usize>() }
        };
        let mut histogram = vec![0.0; bins];
        for (i, &l) in batch.losses.iter().enumerate() {
            let mass = p.at(i);
            if mass > 0.0 {
                histogram[bin_of(sign * l.to_f64())] += mass;
            }
        }
        let mut crossing = 0;
        for b in (0..bins).rev() {
            if beyond_bin + histogram[b] >= target || b == 0 {
                crossing = b;
                break;
            }
            beyond_bin += histogram[b];
        }
        let mut inside = Vec::with_capacity((2 * n / bins).max(16));
        for (i, &l) in batch.losses.iter().enumerate() {
            let (v, mass) = (sign * l.to_f64(), p.at(i));
            if mass > 0.0 && bin_of(v) == crossing {
                inside.push((v, mass));
            }
        }
        inside
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

/// Below this size the remaining items are sorted outright.
const SORT_BELOW: usize = 32;

/// The value v among `items` (value, mass) with mass{value > v} < target <= mass{value >= v}:
/// the weighted upper quantile at mass `target`. Reorders `items`; needs 0 < target and at
/// least one item. A target beyond the total mass (rounding) gives the smallest value.
fn upper_quantile(items: &mut [(f64, f64)], mut target: f64) -> f64 {
    let mut items = items;
    loop {
        if items.len() <= SORT_BELOW {
            items.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
            let mut above = 0.0;
            for &(value, mass) in items.iter() {
                above += mass;
                if above >= target {
                    return value;
                }
            }
            return items.last().map_or(f64::NEG_INFINITY, |&(v, _)| v);
        }
        let mid = items.len() / 2;
        let (upper, pivot, lower) = items.select_nth_unstable_by(mid, |a, b| b.0.total_cmp(&a.0));
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
            let items: Vec<(f64, f64)> =
                (0..n).map(|_| ((next() * 10.0).floor(), next())).collect();
            let total: f64 = items.iter().map(|x| x.1).sum();
            let target = total * next().max(1e-3);
            let mut work = items.clone();
            assert_eq!(upper_quantile(&mut work, target), reference(&items, target));
        }
    }
}
