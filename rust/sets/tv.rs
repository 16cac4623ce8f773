//! Total-variation ball: (1/2) sum_i |q_i - p_i| <= rho (docs/method.md#total-variation). The
//! worst case moves rho of mass from the smallest losses onto the largest (ties at the max share
//! it in proportion to p, and the smallest losses tied at the cut give up mass in proportion to
//! p): q* = p + r (mass on the arg-max) - r (mass off the smallest losses), r = min(rho, the mass
//! of p off the arg-max). No dual variable.

use crate::kernels::batch::Batch;
use crate::kernels::passes;
use crate::kernels::real::Real;
use crate::kernels::select::{quantile, Quantile};
use crate::Outcome;

pub fn solve<T: Real>(batch: &Batch<T>, radius: f64, out: &mut [T]) -> Outcome {
    if radius == 0.0 || batch.is_flat() {
        let value = batch.write_reference(out);
        return Outcome { value, dual: None, iterations: 0 };
    }
    if radius >= batch.mass_below_max() {
        let value = batch.write_argmax(out);
        return Outcome { value, dual: None, iterations: 0 };
    }
    // The lower quantile of the losses is the upper quantile of their negatives.
    let Quantile { value, beyond: below, at } = quantile(batch, radius, -1.0);
    let cut = -value;
    if cut >= batch.max {
        let value = batch.write_argmax(out);
        return Outcome { value, dual: None, iterations: 0 };
    }
    // Fraction of p kept by the losses tied at the cut. Those at the max gain rho in proportion
    // to p: p + rho (p / mass), never p (1 + rho / mass), which overflows for a subnormal mass.
    let kept = (1.0 - (radius - below) / at).clamp(0.0, 1.0);
    let (max, mass_at_max) = (batch.max, batch.mass_at_max);
    let [value] = passes::write(
        batch.losses,
        &batch.reference,
        out,
        |l, p| {
            // Every candidate computed, one selected (an if-else chain compiled to branches on
            // the data, half of them mispredicted).
            let (gained, cut_share) = (p + radius * (p / mass_at_max), p * kept);
            let q = if l < cut { 0.0 } else { p };
            let q = if l == cut { cut_share } else { q };
            if l == max {
                gained
            } else {
                q
            }
        },
        |l, q| [q * l],
    );
    Outcome { value, dual: None, iterations: 1 }
}

#[cfg(test)]
mod tests {
    use crate::testing::{check_invariants, options, solve_f64, Rng};
    use crate::{Ambiguity, Budget, Options};

    #[test]
    fn moves_exactly_rho_from_the_bottom_to_the_top() {
        let mut rng = Rng::new(6);
        for trial in 0..300 {
            let n = 1 + trial % 70;
            let losses = rng.losses(n, 2.0);
            let reference = rng.reference(n);
            let radius = rng.uniform();
            let opts = Options { reference: Some(&reference), ..options(Ambiguity::Tv, Budget::Radius(radius)) };
            let (q, solution) = solve_f64(&losses, &opts);
            check_invariants(&losses, Some(&reference), &q, &solution);
            let total: f64 = reference.iter().sum();
            let tv: f64 = 0.5 * q.iter().zip(&reference).map(|(a, b)| (a - b / total).abs()).sum::<f64>();
            assert!(tv <= radius + 1e-12, "TV {tv} > {radius}");
        }
    }

    /// Large batches go through the histogram; compare with moving mass by hand on a sort.
    #[test]
    fn large_batches_match_a_full_sort() {
        let mut rng = Rng::new(8);
        for trial in 0..20 {
            let n = 1024 + 991 * trial;
            let losses = rng.losses(n, if trial % 3 == 0 { 1e-300 } else { 1.0 });
            let radius = rng.uniform() * 0.9;
            let (_, solution) = solve_f64(&losses, &options(Ambiguity::Tv, Budget::Radius(radius)));
            let mut sorted = losses.clone();
            sorted.sort_by(f64::total_cmp);
            let max = sorted[n - 1];
            let at_max = sorted.iter().filter(|&&l| l == max).count() as f64 / n as f64;
            let moved = radius.min(1.0 - at_max);
            let (mut left, mut removed) = (moved, 0.0);
            for &l in &sorted {
                let take = (1.0 / n as f64).min(left);
                removed += take * l;
                left -= take;
            }
            let mean: f64 = losses.iter().sum::<f64>() / n as f64;
            let value = mean - removed + moved * max;
            let scale = losses.iter().fold(0.0_f64, |m, l| m.max(l.abs()));
            assert!((value - solution.value).abs() <= 1e-12 * scale, "n {n}: {value} vs {}", solution.value);
        }
    }

    /// Found by fuzzing: a subnormal p at the arg-max made the gain 1 + rho / mass infinite.
    #[test]
    fn a_subnormal_mass_at_the_max_gets_finite_weights() {
        let losses = [1e-299, 0.0, 0.0];
        let reference = [1.390671161567004e-308, 89.0, 0.0];
        for radius in [0.47658503089951937, 2.0] {
            let opts = Options { reference: Some(&reference), ..options(Ambiguity::Tv, Budget::Radius(radius)) };
            let (q, solution) = solve_f64(&losses, &opts);
            check_invariants(&losses, Some(&reference), &q, &solution);
        }
    }

    #[test]
    fn a_small_example_by_hand() {
        let (q, solution) = solve_f64(&[1.0, 2.0, 3.0, 4.0], &options(Ambiguity::Tv, Budget::Radius(0.3)));
        let expected = [0.0, 0.2, 0.25, 0.55];
        for (a, b) in q.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-15);
        }
        assert!((solution.value - (0.4 + 0.75 + 2.2)).abs() < 1e-14);
    }
}
