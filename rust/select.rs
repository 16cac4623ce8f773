//! Weighted selection: the threshold where the mass of the largest values reaches a target,
//! in expected linear time (quickselect on halves, no full sort). CVaR and TV need it.

/// Below this size the remaining items are sorted outright.
const SORT_BELOW: usize = 32;

/// The value v among `items` (value, mass) with mass{value > v} < target <= mass{value >= v}:
/// the weighted upper quantile at mass `target`. Reorders `items`; needs 0 < target and at
/// least one item. A target beyond the total mass (rounding) gives the smallest value.
pub fn upper_quantile(items: &mut [(f64, f64)], mut target: f64) -> f64 {
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
