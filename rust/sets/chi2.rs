//! Chi-square ball: (1/2) sum_i (q_i - p_i)^2 / p_i <= rho (the Cressie-Read k = 2 convention).
//! The worst case is q_i ~ p_i (l_i - eta)_+ (docs/method.md#chi-square).
//!
//! Constrained form: the dual V* = min_eta eta + sqrt(1 + 2 rho) sqrt(sum_i p_i (l_i - eta)_+^2)
//! is stationary where S2(eta) = c S1(eta)^2, c = 1 + 2 rho, with S_k = sum_i p_i (l_i - eta)_+^k.
//! On a fixed active set A = {l_i > eta} that is a quadratic in eta with the closed form
//!     eta = m_A - sqrt(v_A / (c P_A - 1)),
//! (m_A, v_A, P_A: mean, variance and mass of p on A). The denominator is computed as
//! 2 rho P_A - (1 - P_A), with 1 - P_A summed over the points outside A: formed as c P_A - 1 it
//! loses all precision for small rho (c rounds to 1 below rho = 1.1e-16). We iterate
//! A <- {l > eta} from the whole support; the thresholds are nested, so an unchanged count means an unchanged set and an exact
//! answer, usually after 2 to 5 passes. An exact sort-and-sweep solve backs it up.
//!
//! Penalised form (penalty lam): sup_q sum q l - lam * chi2(q || p) gives
//! q_i = p_i (l_i - t)_+ / lam with sum_i p_i (l_i - t)_+ = lam: Michelot's fixed point
//! t = (sum_A p l - lam) / P_A, which rises monotonically to the exact threshold.

use crate::kernels::batch::{Batch, Scale};
use crate::kernels::passes;
use crate::kernels::real::Real;
use crate::Outcome;

/// Passes of the active-set iteration before the exact sort takes over.
const MAX_PASSES: u32 = 64;

pub fn solve_radius<T: Real>(batch: &Batch<T>, radius: f64, out: &mut [T]) -> Outcome {
    if radius == 0.0 || batch.is_flat() {
        let value = batch.write_reference(out);
        return Outcome { value, dual: Some(f64::NEG_INFINITY), iterations: 0 };
    }
    let c = 1.0 + 2.0 * radius;
    // q ~ p (l - eta)_+ concentrates on the arg-max as eta -> max, where S2/S1^2 -> 1/P(argmax).
    // At c P(argmax) = 1 exactly (rho = 0.7 with 10 of 24 losses at the max) rounding decides
    // either way, and below it the threshold sits on a loss where the sweep finds no segment
    // root: the slack of the summed mass (n eps) counts as saturated (found by the scipy tests).
    if c * batch.mass_at_max >= 1.0 - batch.len() as f64 * f64::EPSILON {
        let value = batch.write_argmax(out);
        return Outcome { value, dual: Some(batch.max), iterations: 0 };
    }
    let scale = batch.scale();
    let (eta, iterations, total) = match active_set_threshold(batch, &scale, radius) {
        Some((eta, passes, false, total)) => (eta, passes, total),
        // No answer, or one from a variance too small to trust: the exact sweep, whose sums
        // are lifted where the gaps are tiny.
        _ => match sorted_threshold(batch, &scale, radius) {
            Some(eta) => (eta, MAX_PASSES + 1, None),
            None => return shrunk_into_the_ball(batch, &scale, radius, out),
        },
    };
    // A radius so small (5e-324) that m - eta overflows: q = p to the last digit, where the
    // weights p (u - eta) would be inf / inf.
    if eta == f64::NEG_INFINITY {
        let value = batch.write_reference(out);
        return Outcome { value, dual: Some(eta), iterations };
    }
    let value = write_threshold(batch, &scale, eta, total, out);
    Outcome { value, dual: Some(scale.loss(eta)), iterations }
}

pub fn solve_penalty<T: Real>(batch: &Batch<T>, lam: f64, out: &mut [T]) -> Outcome {
    if batch.is_flat() {
        let value = batch.write_reference(out);
        return Outcome { value, dual: Some(f64::NEG_INFINITY), iterations: 0 };
    }
    let scale = batch.scale();
    let lam_u = scale.to_u_units(lam);
    if lam_u == 0.0 {
        let value = batch.write_argmax(out);
        return Outcome { value, dual: Some(batch.max), iterations: 0 };
    }
    if lam_u.is_infinite() {
        let value = batch.write_reference(out);
        return Outcome { value, dual: Some(f64::NEG_INFINITY), iterations: 0 };
    }
    let mut threshold = f64::NEG_INFINITY;
    let mut previous = usize::MAX;
    let mut iterations = 0;
    let total = loop {
        let moments = Michelot::above(batch, &scale, threshold);
        iterations += 1;
        // The active sets only shrink in exact arithmetic; a count that grows means rounding
        // put the threshold on a loss, where either set gives the same threshold: stop, or
        // the iteration flips between the two sets forever. This pass summed over {u > t}:
        // S1 = sum p (u - t)_+ for free.
        if moments.count >= previous {
            break exact_total(moments.first, -threshold * moments.mass);
        }
        previous = moments.count;
        threshold = (moments.first - lam_u) / moments.mass;
    };
    // A penalty near f64::MAX: (first - lam) / mass overflows to -inf, and the weights would be
    // NaN. The answer is q = p to the last digit there.
    if threshold == f64::NEG_INFINITY {
        let value = batch.write_reference(out);
        return Outcome { value, dual: Some(threshold), iterations };
    }
    let value = write_threshold(batch, &scale, threshold, total, out);
    Outcome { value, dual: Some(scale.loss(threshold)), iterations }
}

/// q ~ p (u - eta)_+, written as p (u - eta)_+ / (0 - eta), in [0, p] (eta < 0, the u of the
/// max): for a tiny eta (a tiny penalty, or a tiny p at the max) the plain products are
/// subnormal, so tied losses would get unequal weights and small weights underflow. Lifted by 2^1000 where -eta is itself below 1e-290.
/// S1 = sum_A p (u - eta) from a moments pass as first + offset (first summed about a shift,
/// offset = (shift - eta) P_A), or None where the two cancel or S1 is near the subnormals: it
/// would then be less precise than the sum of the written weights.
fn exact_total(first: f64, offset: f64) -> Option<f64> {
    let total = first + offset;
    (total > 1e-280 && first.abs() + offset.abs() <= 1e3 * total).then_some(total)
}

/// `total`, where known, is S1 = sum p (u - eta)_+ from the last moments pass: the weights are
/// then written normalised in one pass instead of two.
fn write_threshold<T: Real>(batch: &Batch<T>, scale: &Scale, eta: f64, total: Option<f64>, out: &mut [T]) -> f64 {
    // Above 1e290, 1 / -eta would be subnormal: lowered by 2^-1000 instead.
    let lift = if -eta < 1e-290 {
        f64::powi(2.0, 1000)
    } else if -eta > 1e290 {
        f64::powi(2.0, -1000)
    } else {
        1.0
    };
    let inv = 1.0 / (-eta * lift);
    let factor = |l: f64| ((scale.u(l) * lift - eta * lift) * inv).max(0.0);
    if batch.mass_at_max >= TINY_MASS_AT_MAX {
        // sum p f = S1 / -eta; p f and the sum are products of normal numbers here.
        let known = total.map(|s1| s1 * lift * inv).filter(|t| t.is_finite() && *t > 0.0);
        if let Some(inv_total) = known.map(|t| 1.0 / t).filter(|i| i.is_finite()) {
            let [value] =
                passes::write(batch.losses, &batch.reference, out, |l, p| p * factor(l) * inv_total, |l, q| [q * l]);
            return value;
        }
        return batch.write_normalised(out, |l, p| p * factor(l));
    }
    // The total (>= the mass at the max) may be tiny and the stored products p f subnormal, or
    // zero in float32: write q = p f / total directly, p and f each lifted by
    // 2^500 so that their product stays normal.
    let [total] = passes::sum(batch.losses, &batch.reference, |l, p| [p * factor(l)]);
    let (up, inv_total) = (f64::powi(2.0, 500), 1.0 / (total * f64::powi(2.0, 1000)));
    let [value] = passes::write(
        batch.losses,
        &batch.reference,
        out,
        |l, p| (p * up) * (factor(l) * up) * inv_total,
        |l, q| [q * l],
    );
    value
}

/// Below this mass of p at the max (a lower bound on the total of the unnormalised weights),
/// those weights may underflow while q does not.
const TINY_MASS_AT_MAX: f64 = 1e-8;

/// Sums over {i : u_i > threshold, p_i > 0} of p, p (u - shift), p (u - shift)^2, and the count
/// of such i; and the mass of p outside that set. The shift keeps the variance free of
/// cancellation when the active losses cluster.
struct Moments {
    count: usize,
    mass: f64,
    first: f64,
    second: f64,
    outside: f64,
}

impl Moments {
    fn above<T: Real>(batch: &Batch<T>, scale: &Scale, threshold: f64, shift: f64) -> Self {
        let [count, mass, first, second, outside] =
            passes::sum_above(batch.losses, &batch.reference, scale, threshold, shift);
        Moments { count: count as usize, mass, first, second, outside }
    }
}

/// The sums over {i : u_i > threshold, p_i > 0} that the penalised form needs: the count, the
/// mass of p and sum p u (Moments' sums about a shift of 0).
struct Michelot {
    count: usize,
    mass: f64,
    first: f64,
}

impl Michelot {
    fn above<T: Real>(batch: &Batch<T>, scale: &Scale, threshold: f64) -> Self {
        let [count, mass, first, _, _] = passes::sum_above(batch.losses, &batch.reference, scale, threshold, 0.0);
        Michelot { count: count as usize, mass, first }
    }
}

/// Closed-form eta on an active set with mass P (and `outside` = 1 - P), mean m and variance v:
/// the root below m of (v + (m - eta)^2) = c P (m - eta)^2, c = 1 + 2 rho. None when no root
/// exists on this set.
fn closed_form(radius: f64, mass: f64, outside: f64, mean: f64, variance: f64) -> Option<f64> {
    closed_form_spread(radius, mass, outside, mean, variance.max(0.0).sqrt())
}

/// `closed_form` from the standard deviation of the set, which may be far below the square
/// root of the smallest float.
fn closed_form_spread(radius: f64, mass: f64, outside: f64, mean: f64, spread: f64) -> Option<f64> {
    let denominator = 2.0 * radius * mass - outside;
    (denominator > 0.0).then(|| mean - spread / denominator.sqrt())
}

/// How far the sorted sweep lowers its lift of the gaps at a time as they widen, so that no
/// square overflows.
const LIFT_STEP: f64 = 3.273390607896142e150; // 2^500

/// The threshold, the passes, and whether a variance below 1e-290 went into it: the squares of
/// losses closer than 1e-145 of their range are subnormal or zero, and such a threshold may put
/// q outside the ball.
fn active_set_threshold<T: Real>(
    batch: &Batch<T>,
    scale: &Scale,
    radius: f64,
) -> Option<(f64, u32, bool, Option<f64>)> {
    let mut threshold = f64::NEG_INFINITY;
    let mut shift = 0.0;
    let mut previous = usize::MAX;
    let mut imprecise = false;
    for pass in 1..=MAX_PASSES {
        let mut moments = Moments::above(batch, scale, threshold, shift);
        if moments.count == previous {
            // The last pass summed exactly over {u > eta}: S1 = sum p (u - eta)_+ for free.
            let total = exact_total(moments.first, (shift - threshold) * moments.mass);
            return Some((threshold, pass, imprecise, total));
        }
        if moments.count == 0 || moments.mass <= 0.0 {
            return None;
        }
        let mut centred = moments.first / moments.mass;
        let mut variance = moments.second / moments.mass - centred * centred;
        // Cancellation: the set's mass sits at one loss, away from the shift, and the variance
        // loses its digits (q would leave the ball). The same set
        // again, centred first on u = 0 (its max, exact, so the mean comes out to the precision
        // of the set's own spread, not of the old shift), then on that mean if it still cancels.
        let mut recentred = 0;
        while variance < 1e-8 * (moments.second / moments.mass) && recentred < 2 {
            shift = if recentred == 0 { 0.0 } else { shift + centred };
            moments = Moments::above(batch, scale, threshold, shift);
            centred = moments.first / moments.mass;
            variance = moments.second / moments.mass - centred * centred;
            recentred += 1;
        }
        imprecise |= variance < 1e-290;
        let eta = closed_form(radius, moments.mass, moments.outside, shift + centred, variance)?;
        previous = moments.count;
        shift += centred;
        threshold = eta;
    }
    None
}

/// The exact threshold by sorting the support and sweeping its segments from the top: on the
/// top-k values the closed form is valid when it falls between the k-th and (k+1)-th value.
fn sorted_threshold<T: Real>(batch: &Batch<T>, scale: &Scale, radius: f64) -> Option<f64> {
    let mut points: Vec<(f64, f64)> = batch
        .losses
        .iter()
        .enumerate()
        .map(|(i, &l)| (scale.u(l.to_f64()), batch.reference.at(i)))
        .filter(|&(_, p)| p > 0.0)
        .collect();
    points.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    // outside[k]: the mass of points k.. (below the top k), summed from the bottom.
    let mut outside = vec![0.0; points.len() + 1];
    for k in (0..points.len()).rev() {
        outside[k] = outside[k + 1] + points[k].1;
    }
    // Sums of p d and p d^2 for d = (u - max) * lift, the lift a power of two (so exact) that
    // takes the first gap below the max to [0.5, 1), at most 2^1000: the squares of losses
    // closer than 1e-160 of their range underflowed unlifted, and no segment had a root (found
    // by the scipy tests: V* -0.2 for losses (-1, 1e-200, 0) at radius 0.7, where q puts 0.887
    // and 0.113 on the top two).
    let max = points.first().map_or(0.0, |&(u, _)| u);
    let first_gap = points.iter().map(|&(u, _)| max - u).find(|&gap| gap > 0.0).unwrap_or(1.0);
    let mut lift = f64::powi(2.0, (-first_gap.log2().floor() as i32 - 1).clamp(0, 1000));
    let (mut mass, mut first, mut second) = (0.0, 0.0, 0.0);
    let mut at_a_boundary = None;
    let mut k = 0;
    while k < points.len() {
        let top = points[k].0;
        let gap = max - top;
        while gap * lift > LIFT_STEP && lift > 1.0 {
            // The segments have widened: lift less, so that no square overflows.
            lift /= LIFT_STEP;
            first /= LIFT_STEP;
            second /= LIFT_STEP * LIFT_STEP;
        }
        while k < points.len() && points[k].0 == top {
            let (u, p) = points[k];
            let d = (u - max) * lift;
            mass += p;
            first += p * d;
            second += p * d * d;
            k += 1;
        }
        let next = points.get(k).map_or(f64::NEG_INFINITY, |&(u, _)| u);
        let lifted_mean = first / mass;
        let spread = (second / mass - lifted_mean * lifted_mean).max(0.0).sqrt() / lift;
        if let Some(eta) = closed_form_spread(radius, mass, outside[k], max + lifted_mean / lift, spread) {
            if eta >= next && eta < top {
                // Checked: the sweep also answers for the active sets whose variance was too
                // small to trust, where rounding can still decide.
                return Some(eta).filter(|&eta| inside_the_ball(&points, eta, radius));
            }
            // The exact threshold may sit on a loss, the boundary of two segments, where
            // rounding puts each segment's root just outside it (a threshold exactly at a group of
            // tied losses). The root
            // of the lower segment then lands a few ulps above its top: the threshold is that top.
            // Never the max itself (the first group), where every weight would be zero (NaN
            // weights).
            let below_the_max = top < points[0].0;
            let just_above = eta >= top && eta - top <= 64.0 * f64::EPSILON * (1.0 + top.abs());
            if below_the_max && just_above && at_a_boundary.is_none() {
                at_a_boundary = Some(top);
            }
        }
    }
    // Only where q stays inside the ball: at losses tied to within subnormal differences the
    // rule above can pick a threshold that leaves q outside it.
    if let Some(eta) = at_a_boundary.filter(|&eta| inside_the_ball(&points, eta, radius)) {
        return Some(eta);
    }
    // For c P(argmax) < 1 the last segment always has a root, but not always after rounding:
    // where the gaps are subnormal (losses closer than 1e-308 of their range) even lifted.
    None
}

/// Whether q ~ p (u - eta)_+ over `points` (sorted by u, largest first) has chi2(q || p) =
/// (1/2) (S2 / S1^2 - 1) <= rho, with the gaps scaled by the largest so that neither sum
/// underflows to a false pass.
fn inside_the_ball(points: &[(f64, f64)], eta: f64, radius: f64) -> bool {
    let Some(&(top, _)) = points.first() else { return false };
    let widest = top - eta;
    let (mut s1, mut s2) = (0.0, 0.0);
    for &(u, p) in points.iter().take_while(|&&(u, _)| u > eta) {
        let r = (u - eta) / widest;
        s1 += p * r;
        s2 += p * r * r;
    }
    let divergence = 0.5 * (s2 / s1 / s1 - 1.0);
    widest > 0.0 && s1 > 0.0 && divergence <= radius * (1.0 + 1e-9)
}

/// Where rounding decides the threshold (losses closer than 1e-145 of their range, or no
/// segment with a root, see above), no eta is to be trusted: the thresholds found put q outside
/// the ball. Instead the linear tilt q' ~ p (u - eta), eta = min u - 1 (every point active),
/// shrunk towards p: q = p + t (q' - p), t = min(1, sqrt(rho / chi2(q'))). Inside the ball,
/// nondecreasing in the loss, V >= sum p l; not the optimum, which rounding hides here.
fn shrunk_into_the_ball<T: Real>(batch: &Batch<T>, scale: &Scale, radius: f64, out: &mut [T]) -> Outcome {
    let eta = scale.u(batch.min) - 1.0;
    let factor = |l: f64| (scale.u(l) - eta).max(0.0);
    let [total] = passes::sum(batch.losses, &batch.reference, |l, p| [p * factor(l)]);
    let [twice] = passes::sum(batch.losses, &batch.reference, |l, p| {
        let r = factor(l) / total - 1.0;
        [p * r * r]
    });
    let t = (2.0 * radius / twice).sqrt().min(1.0);
    let [value] = passes::write(
        batch.losses,
        &batch.reference,
        out,
        |l, p| p * (1.0 + t * (factor(l) / total - 1.0)),
        |l, q| [q * l],
    );
    Outcome { value, dual: None, iterations: MAX_PASSES + 1 }
}

#[cfg(test)]
pub(crate) fn sorted_threshold_for_tests(losses: &[f64], radius: f64) -> (f64, f64) {
    let batch = Batch::new(losses, crate::kernels::batch::Reference::uniform(losses.len())).unwrap();
    let scale = batch.scale();
    let exact = sorted_threshold(&batch, &scale, radius).unwrap_or(f64::NAN);
    let fast = active_set_threshold(&batch, &scale, radius).map_or(f64::NAN, |(eta, _, _, _)| eta);
    (exact, fast)
}

#[cfg(test)]
mod tests {
    use super::sorted_threshold_for_tests;
    use crate::testing::{check_invariants, normalised, options, solve_f64, Rng};
    use crate::{Ambiguity, Budget, Options};

    fn divergence(q: &[f64], p: &[f64]) -> f64 {
        0.5 * q.iter().zip(p).filter(|(_, &b)| b > 0.0).map(|(&a, &b)| (a - b) * (a - b) / b).sum::<f64>()
    }

    #[test]
    fn the_active_set_iteration_finds_the_exact_threshold() {
        let mut rng = Rng::new(2);
        for trial in 0..500 {
            let n = 2 + trial % 64;
            let losses = rng.losses(n, 1.0);
            let radius = rng.uniform() * 3.0;
            if losses.iter().all(|&l| l == losses[0]) {
                continue;
            }
            let max = losses.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l));
            let at_max = losses.iter().filter(|&&l| l == max).count() as f64 / n as f64;
            if (1.0 + 2.0 * radius) * at_max >= 1.0 {
                continue;
            }
            let (exact, fast) = sorted_threshold_for_tests(&losses, radius);
            assert!((exact - fast).abs() <= 1e-12, "{losses:?} rho {radius}: {exact} vs {fast}");
        }
    }

    /// Found by hypothesis (tests/test_invariants.py): the threshold sits exactly on the tied
    /// zeros, rounding rejected every segment, and the fallback's V = 0.5 fell below the value
    /// at radius 0.1 (0.544). The answer puts half the mass on each of the top two.
    #[test]
    fn a_threshold_on_a_loss_is_found_when_rounding_rejects_both_segments() {
        for top in [[1.0, 1.0 - f64::EPSILON / 2.0], [1.0 + f64::EPSILON, 1.0], [1.0, 1.0]] {
            let losses = [0.0, 0.0, 0.0, 0.0, top[0], top[1]];
            let (q, solution) = solve_f64(&losses, &options(Ambiguity::Chi2, Budget::Radius(1.0)));
            check_invariants(&losses, None, &q, &solution);
            assert!((solution.value - 1.0).abs() < 1e-12, "{top:?}: {solution:?}");
            assert!(divergence(&q, &[1.0 / 6.0; 6]) <= 1.0 + 1e-12, "{q:?}");
        }
    }

    /// Found by the scipy tests: the top two losses 1e-200 apart, whose squares underflowed
    /// in the sweep, so that no segment had a root (V* -0.2 from the fallback, not ~0).
    #[test]
    fn top_losses_closer_than_the_square_root_of_the_smallest_float_keep_their_threshold() {
        for gap in [1e-17, 1e-160, 1e-200, 1e-300, 1e-307] {
            let losses = [-1.0, gap, 0.0];
            let (q, solution) = solve_f64(&losses, &options(Ambiguity::Chi2, Budget::Radius(0.7)));
            check_invariants(&losses, None, &q, &solution);
            assert!((q[1] - 0.8872983346207417).abs() < 1e-9 && q[0] == 0.0, "gap {gap}: {q:?}");
        }
    }

    /// Found by fuzzing the boundary rule above: the first group's root landed just above the
    /// max, and a threshold at the max zeroed every weight (NaN after normalising).
    #[test]
    fn the_threshold_is_never_the_max() {
        let cases: [(&[f64], f64); 2] = [
            (&[4.1999999999999976e-299, -1.7976931348623157e308, 0.0], 0.3358815899900816),
            (&[-1e300, 6.599999999999999e-165, 0.0], 0.4516365300984207),
        ];
        for (losses, radius) in cases {
            let (q, solution) = solve_f64(losses, &options(Ambiguity::Chi2, Budget::Radius(radius)));
            check_invariants(losses, None, &q, &solution);
            assert!(divergence(&q, &[1.0 / 3.0; 3]) <= radius + 1e-12, "{q:?}");
        }
    }

    /// Found by fuzzing the same rule: the max 2e-308 above a loss of 0 that holds nearly all of
    /// p, and a threshold on that 0 put all mass on the max (p 1.7e-270), far outside the ball.
    #[test]
    fn a_threshold_on_a_loss_only_where_q_stays_in_the_ball() {
        let losses = [2.1250000000000002e-23, -1.0, 2.2250738585072014e-308, -8207.999999999998, 0.0, 0.0, 0.0];
        let reference = [
            2.2250738585072014e-308,
            9.999999999999994e-271,
            3e38,
            3.4028234663852886e38,
            1.7976931348623157e308,
            0.0,
            0.0,
        ];
        let radius = 0.7031204699778744;
        let opts = Options { reference: Some(&reference), ..options(Ambiguity::Chi2, Budget::Radius(radius)) };
        let (q, solution) = solve_f64(&losses, &opts);
        check_invariants(&losses, Some(&reference), &q, &solution);
        let p = normalised(&reference);
        assert!(divergence(&q, &p) <= radius * (1.0 + 1e-9), "{q:?}");
    }

    #[test]
    fn the_constraint_binds_below_saturation() {
        let mut rng = Rng::new(3);
        for trial in 0..300 {
            let n = 1 + trial % 50;
            let losses = rng.losses(n, 10.0);
            let reference = rng.reference(n);
            let radius = rng.uniform() * 2.0;
            let opts = Options { reference: Some(&reference), ..options(Ambiguity::Chi2, Budget::Radius(radius)) };
            let (q, solution) = solve_f64(&losses, &opts);
            check_invariants(&losses, Some(&reference), &q, &solution);
            let total: f64 = reference.iter().sum();
            let p: Vec<f64> = reference.iter().map(|x| x / total).collect();
            let chi2 = divergence(&q, &p);
            assert!(chi2 <= radius * (1.0 + 1e-9) + 1e-15, "chi2 {chi2} > radius {radius}");
            let saturated = solution.dual.is_some_and(|eta| eta >= solution.value);
            let support: Vec<f64> = losses.iter().zip(&p).filter(|(_, &b)| b > 0.0).map(|(l, _)| *l).collect();
            let flat = support.iter().all(|&l| l == support[0]);
            if !saturated && !flat {
                assert!(
                    (chi2 - radius).abs() <= 1e-9 * radius,
                    "chi2 {chi2} != radius {radius}: {losses:?} {reference:?} {solution:?}"
                );
            }
        }
    }

    /// Found by fuzzing: with c = 1 + 2 rho formed first, rho below 1.1e-16 made c = 1, no
    /// segment had a root and the fallback threshold gave q = (1/3, 2/3) (chi2 = 0.056) for
    /// rho = 2.2e-308; rho near 1e-11 lost half its digits.
    #[test]
    fn small_radii_keep_their_precision() {
        for radius in [2.2250738585072014e-308, 5e-324] {
            let (q, _) = solve_f64(&[-1.0000000000000005e207, 0.0], &options(Ambiguity::Chi2, Budget::Radius(radius)));
            assert!((q[0] - 0.5).abs() < 1e-15 && (q[1] - 0.5).abs() < 1e-15, "{q:?}");
        }
        let losses = [0.3, -1.0, 2.5, 0.0, 1.7];
        let p = [0.2; 5];
        for radius in [1e-14, 1e-12, 1e-11, 1e-8] {
            let (q, solution) = solve_f64(&losses, &options(Ambiguity::Chi2, Budget::Radius(radius)));
            check_invariants(&losses, None, &q, &solution);
            let chi2 = divergence(&q, &p);
            assert!((chi2 - radius).abs() <= 1e-6 * radius, "chi2 {chi2} for radius {radius}");
        }
    }

    /// Found by tests/test_edge_cases.py (groups, chi2 penalty 0.5): rounding put the penalised
    /// threshold on the loss 1.0 and the active set flipped between 3 and 2 losses forever.
    #[test]
    fn the_penalised_iteration_stops_when_the_threshold_lands_on_a_loss() {
        let losses = [4.0, -0.2, 2.25, 1.0];
        let reference = [0.09090909090909091, 0.45454545454545453, 0.18181818181818182, 0.2727272727272727];
        let opts = Options { reference: Some(&reference), ..options(Ambiguity::Chi2, Budget::Penalty(0.5)) };
        let (q, solution) = solve_f64(&losses, &opts);
        check_invariants(&losses, Some(&reference), &q, &solution);
        assert!(q[3].abs() < 1e-12 && q[1] == 0.0, "{q:?}");
    }

    /// Found by fuzzing through the Python API: a penalty of 1e-300 made eta subnormal, and
    /// ties at the max got weights 0.25000012 and 0.74999988 instead of in proportion to p; a
    /// tiny p at the max lost its weight 5e-289 to underflow.
    #[test]
    fn a_tiny_threshold_keeps_the_weights_precise() {
        let reference = [1.0, 3.0, 3.0];
        let opts = Options { reference: Some(&reference), ..options(Ambiguity::Chi2, Budget::Penalty(1e-300)) };
        let (q, _) = solve_f64(&[0.0, 0.0, -9.6568748e16], &opts);
        assert_eq!(q, vec![0.25, 0.75, 0.0]);
        let reference = [1.0, 1e300, 1e300];
        let opts = Options { reference: Some(&reference), ..options(Ambiguity::Chi2, Budget::Penalty(1e-12)) };
        let losses = [0.0, -1.0, -2.02402253e23];
        let (q, solution) = solve_f64(&losses, &opts);
        check_invariants(&losses, Some(&reference), &q, &solution);
        assert!(q[0] > 1e-290, "{q:?}");
    }

    /// Found by fuzzing: float32 output where only points of tiny p are active (here both
    /// 1e-50); the stored products p (u - eta) were 0 in float32 and so was every weight.
    #[test]
    fn a_tiny_active_mass_keeps_its_weights_in_float32() {
        let reference = [1.0, 1e-50, 1e-50];
        let losses: [f32; 3] = [-1.0, 0.0, -0.5];
        let opts = Options { reference: Some(&reference), ..options(Ambiguity::Chi2, Budget::Radius(4e49)) };
        let mut q = [f32::NAN; 3];
        crate::solve(&losses[..], &opts, &mut q).unwrap();
        let sum: f32 = q.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6 && q[0] == 0.0 && q[1] > q[2], "{q:?}");
    }

    #[test]
    fn nearly_all_mass_at_one_loss_keeps_the_constraint() {
        let losses = [1.7318359375e-23, 9.999999999999998e-123, 0.0];
        let reference = [1.0000000000000001e-60, 1.401298464324817e-45, 0.0];
        let radius = 0.7031204699778744;
        let opts = Options { reference: Some(&reference), ..options(Ambiguity::Chi2, Budget::Radius(radius)) };
        let (q, solution) = solve_f64(&losses, &opts);
        check_invariants(&losses, Some(&reference), &q, &solution);
        let p = normalised(&reference);
        let chi2 = divergence(&q, &p);
        assert!((chi2 - radius).abs() <= 1e-6 * radius, "chi2 {chi2} for radius {radius}: {q:?}");
    }

    /// Found by fuzzing: the top four losses within 3.4e-23 of the range, where the old shift
    /// (-0.2) itself carried more error than their spread.
    #[test]
    fn a_cluster_at_the_top_keeps_the_constraint() {
        let losses = [-2.3432617187500003e-23, -1e61, 3.4028234663852886e38, 1.0000000000000001e-24, 0.0];
        let radius = 0.7031204699778744;
        let (q, solution) = solve_f64(&losses, &options(Ambiguity::Chi2, Budget::Radius(radius)));
        check_invariants(&losses, None, &q, &solution);
        let chi2 = divergence(&q, &[0.2; 5]);
        assert!((chi2 - radius).abs() <= 1e-6 * radius, "chi2 {chi2} for radius {radius}: {q:?}");
    }

    /// Found by tests/test_reference_solvers.py: c P(argmax) = 2.4 * 10/24 rounds below 1, the
    /// top segment's root sits on the max, no segment qualified and the fallback threshold gave
    /// V* = 2.45 instead of 4.
    #[test]
    fn saturation_survives_rounding_at_the_boundary() {
        let mut losses = vec![0.0; 13];
        losses.push(3.0);
        losses.extend([4.0; 10]);
        let (q, solution) = solve_f64(&losses, &options(Ambiguity::Chi2, Budget::Radius(0.7)));
        check_invariants(&losses, None, &q, &solution);
        assert!((solution.value - 4.0).abs() < 1e-12, "{solution:?}");
    }

    /// Found by fuzzing: losses within 1e-22 of each other in a range of 1e300, where no
    /// segment of the sorted sweep had a root and the old fallback gave chi2 1.095 for 0.703.
    #[test]
    fn when_rounding_leaves_no_root_the_weights_stay_in_the_ball() {
        let (z, m) = (0.0, -1e300);
        let losses = [
            z,
            z,
            z,
            z,
            z,
            z,
            m,
            m,
            m,
            z,
            z,
            1.6000000000000002e-23,
            m,
            m,
            m,
            m,
            m,
            m,
            z,
            -6.6e-23,
            m,
            m,
            z,
            z,
            m,
            m,
            -1.13e-22,
            1.4305664062500002e-23,
            1.8702e-319,
        ];
        let radius = 0.7031204699778744;
        let (q, solution) = solve_f64(&losses, &options(Ambiguity::Chi2, Budget::Radius(radius)));
        check_invariants(&losses, None, &q, &solution);
        let p = vec![1.0 / losses.len() as f64; losses.len()];
        let chi2 = divergence(&q, &p);
        assert!(chi2 <= radius * (1.0 + 1e-9), "chi2 {chi2} for radius {radius}: {q:?}");
    }

    /// Found by fuzzing: a penalty of f64::MAX made the threshold -inf and the weights NaN.
    #[test]
    fn a_penalty_near_the_largest_float_gives_q_equal_p() {
        let mut losses = vec![0.0; 40];
        losses[1] = -1e-285;
        losses[2] = 1e-190;
        losses[38] = 1.0;
        for lam in [f64::MAX, 1e300] {
            let (q, solution) = solve_f64(&losses, &options(Ambiguity::Chi2, Budget::Penalty(lam)));
            check_invariants(&losses, None, &q, &solution);
            assert!(q.iter().all(|&x| (x - 0.025).abs() < 1e-15), "{q:?}");
        }
    }

    #[test]
    fn weights_do_not_depend_on_the_scale_of_the_losses() {
        let base = [0.3, -1.0, 2.5, 2.5, 0.0, 1.7, -0.2];
        for opts in [options(Ambiguity::Chi2, Budget::Radius(0.3)), options(Ambiguity::Chi2, Budget::Radius(0.01))] {
            let (q, _) = solve_f64(&base, &opts);
            for scale in [1e-300_f64, 1e300, 1e-3] {
                let scaled: Vec<f64> = base.iter().map(|l| l * scale.abs()).collect();
                let (qs, solution) = solve_f64(&scaled, &opts);
                check_invariants(&scaled, None, &qs, &solution);
                for (a, b) in q.iter().zip(&qs) {
                    assert!((a - b).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn the_penalised_form_is_a_clipped_linear_tilt() {
        let mut rng = Rng::new(4);
        for trial in 0..200 {
            let n = 1 + trial % 30;
            let losses = rng.losses(n, 1.0);
            let lam = 0.01 + rng.uniform() * 5.0;
            let (q, solution) = solve_f64(&losses, &options(Ambiguity::Chi2, Budget::Penalty(lam)));
            check_invariants(&losses, None, &q, &solution);
            let t = solution.dual.unwrap();
            if t.is_finite() {
                for (qi, li) in q.iter().zip(&losses) {
                    let expected = (li - t).max(0.0) / (n as f64 * lam);
                    assert!((qi - expected).abs() < 1e-9, "q {qi} vs {expected}");
                }
            }
        }
    }
}
