//! CVaR set: q_i <= p_i / alpha, alpha in (0, 1]. The worst case fills the largest losses first
//! up to p_i / alpha each until the mass reaches one (docs/method.md#cvar); the loss where it
//! stops is the alpha-quantile eta of the dual V* = min_eta eta + (1/alpha) sum p (l - eta)_+.
//! Losses tied at eta share what is left in proportion to p.

use crate::kernels::batch::Batch;
use crate::kernels::passes;
use crate::kernels::real::Real;
use crate::kernels::select::{quantile, Quantile};
use crate::Outcome;

pub fn solve<T: Real>(batch: &Batch<T>, alpha: f64, out: &mut [T]) -> Outcome {
    if alpha >= 1.0 || batch.is_flat() {
        let value = batch.write_reference(out);
        return Outcome { value, dual: Some(batch.min), iterations: 0 };
    }
    if alpha <= batch.mass_at_max {
        let value = batch.write_argmax(out);
        return Outcome { value, dual: Some(batch.max), iterations: 0 };
    }
    let Quantile { value: eta, beyond: above, at } = quantile(batch, alpha, 1.0);
    // The losses above eta get their cap p / alpha (below one: their p sum to less than alpha),
    // as p * (1 / alpha) but for a subnormal alpha, whose reciprocal overflows. Those tied at
    // eta share what is left, (alpha - above) / alpha, in proportion to p: p / at times that,
    // capped. Every factor is at most one, so nothing overflows or goes subnormal on the way
    // (through p * fraction ties would split unevenly).
    let left = ((alpha - above) / alpha).clamp(0.0, 1.0);
    let cap = 1.0 / alpha;
    let value = if cap.is_finite() {
        write_weights(batch, out, eta, at, left, |p| p * cap)
    } else {
        write_weights(batch, out, eta, at, left, |p| p / alpha)
    };
    Outcome { value, dual: Some(eta), iterations: 1 }
}

/// q = capped(p) above eta, p / at * left (at most the cap) at eta, 0 below. Every candidate
/// is computed and one selected, so the pass vectorises; as an if-else chain it compiled to
/// branches on the data, mispredicted on unsorted losses.
fn write_weights<T: Real>(
    batch: &Batch<T>,
    out: &mut [T],
    eta: f64,
    at: f64,
    left: f64,
    capped: impl Fn(f64) -> f64 + Sync,
) -> f64 {
    let [value] = passes::write(
        batch.losses,
        &batch.reference,
        out,
        |l, p| {
            let (top, tied) = (capped(p), (p / at * left).min(capped(p)));
            let q = if l > eta { top } else { 0.0 };
            if l == eta {
                tied
            } else {
                q
            }
        },
        |l, q| [q * l],
    );
    value
}

#[cfg(test)]
mod tests {
    use crate::testing::{check_invariants, options, solve_f64, Rng};
    use crate::{Ambiguity, Budget, Options};

    #[test]
    fn weights_are_capped_at_p_over_alpha() {
        let mut rng = Rng::new(5);
        for trial in 0..300 {
            let n = 1 + trial % 70;
            let losses = rng.losses(n, 3.0);
            let reference = rng.reference(n);
            let alpha = rng.uniform().max(1e-3);
            let opts = Options { reference: Some(&reference), ..options(Ambiguity::Cvar, Budget::Alpha(alpha)) };
            let (q, solution) = solve_f64(&losses, &opts);
            check_invariants(&losses, Some(&reference), &q, &solution);
            let total: f64 = reference.iter().sum();
            for (qi, pi) in q.iter().zip(&reference) {
                assert!(*qi <= pi / total / alpha * (1.0 + 1e-12) + 1e-15);
            }
            // The dual's value at eta equals V*.
            let eta = solution.dual.unwrap();
            let dual: f64 =
                eta + losses.iter().zip(&reference).map(|(l, p)| p / total * (l - eta).max(0.0)).sum::<f64>() / alpha;
            assert!((dual - solution.value).abs() < 1e-9 * (1.0 + dual.abs()), "dual {dual} vs {}", solution.value);
        }
    }

    /// Large batches go through the histogram; compare with filling a full sort by hand.
    #[test]
    fn large_batches_match_a_full_sort() {
        let mut rng = Rng::new(7);
        for trial in 0..20 {
            let n = 1024 + 997 * trial;
            let losses = rng.losses(n, if trial % 3 == 0 { 1e300 } else { 1.0 });
            let reference = rng.reference(n);
            let alpha = rng.uniform().max(1e-3);
            let opts = Options { reference: Some(&reference), ..options(Ambiguity::Cvar, Budget::Alpha(alpha)) };
            let (_, solution) = solve_f64(&losses, &opts);
            let total: f64 = reference.iter().sum();
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| losses[b].total_cmp(&losses[a]));
            let (mut left, mut value) = (1.0_f64, 0.0);
            for i in order {
                let take = (reference[i] / total / alpha).min(left);
                value += take * losses[i];
                left -= take;
            }
            let scale = losses.iter().fold(0.0_f64, |m, l| m.max(l.abs()));
            assert!((value - solution.value).abs() <= 1e-12 * scale, "n {n}: {value} vs {}", solution.value);
        }
    }

    /// Found by fuzzing: alpha = 3.2e-319 has no finite reciprocal.
    #[test]
    fn a_subnormal_alpha_gives_finite_weights() {
        let reference = [65.0, 7.7736e-320];
        let losses = [0.0, 9.999999717180685e-10];
        let opts = Options { reference: Some(&reference), ..options(Ambiguity::Cvar, Budget::Alpha(3.23786e-319)) };
        let (q, solution) = solve_f64(&losses, &opts);
        check_invariants(&losses, Some(&reference), &q, &solution);
    }

    /// Found by fuzzing: ties at eta with p near 1e-279 and alpha = 1.2e-38.
    #[test]
    fn ties_at_the_quantile_share_in_proportion_to_p() {
        let losses = [0.0, 0.0, 4.6e-91, 0.0, 0.0, -1.0];
        let reference = [101.0, 21.0, 45.0, 1.673387709521195e131, 1.0000000000000007e281, 21.0];
        let opts =
            Options { reference: Some(&reference), ..options(Ambiguity::Cvar, Budget::Alpha(1.1754943508222875e-38)) };
        let (q, solution) = solve_f64(&losses, &opts);
        check_invariants(&losses, Some(&reference), &q, &solution);
        let ratio = |i: usize| q[i] / reference[i];
        for i in [1, 3, 4] {
            assert!((ratio(i) / ratio(0) - 1.0).abs() < 1e-12, "{q:?}");
        }
    }

    #[test]
    fn the_mean_of_the_top_fraction() {
        let losses = [5.0, 1.0, 4.0, 2.0, 3.0, 0.0];
        let (q, solution) = solve_f64(&losses, &options(Ambiguity::Cvar, Budget::Alpha(0.5)));
        assert_eq!(solution.value, 4.0);
        assert_eq!(q, vec![1.0 / 3.0, 0.0, 1.0 / 3.0, 0.0, 1.0 / 3.0, 0.0]);
    }
}
