//! One validated problem: the losses, the reference distribution p, and what one pass over
//! them tells every solver (the largest and smallest loss on the support of p, the mass of p
//! at the largest loss). Also the helpers that write the two closed-form answers every set
//! shares: q = p (radius 0) and all mass on the arg-max (a radius at or beyond the largest
//! useful one).

use crate::error::{CoreError, Result};
use crate::kernels::passes::{self, Extremes};
use crate::kernels::real::Real;

/// The reference distribution p: uniform, or non-negative weights normalised on the fly.
#[derive(Clone, Copy, Debug)]
pub struct Reference<'a> {
    weights: Option<&'a [f64]>,
    scale: f64,
}

impl<'a> Reference<'a> {
    pub fn uniform(n: usize) -> Self {
        Reference { weights: None, scale: 1.0 / n as f64 }
    }

    /// Checks the weights (finite, non-negative, not all zero, length n) and normalises them
    /// to sum one.
    pub fn weighted(weights: &'a [f64], n: usize) -> Result<Self> {
        if weights.len() != n {
            return Err(CoreError::Reference(format!(
                "reference has length {} but there are {n} losses",
                weights.len()
            )));
        }
        let mut total = 0.0;
        for (i, &w) in weights.iter().enumerate() {
            if !w.is_finite() {
                return Err(CoreError::Reference(format!("reference must be finite, got {w} at index {i}")));
            }
            if w < 0.0 {
                return Err(CoreError::Reference(format!("reference must be non-negative, got {w} at index {i}")));
            }
            total += w;
        }
        if total <= 0.0 {
            return Err(CoreError::Reference("reference is all zero: it must have positive mass".into()));
        }
        if !total.is_finite() {
            return Err(CoreError::Reference("reference sums to infinity: rescale it".into()));
        }
        let scale = 1.0 / total;
        // A sum below 1/f64::MAX (subnormal weights only) has no finite reciprocal: p would be
        // inf.
        if !scale.is_finite() {
            return Err(CoreError::Reference(format!(
                "reference sums to {total:e}, too small to normalise: rescale it"
            )));
        }
        Ok(Reference { weights: Some(weights), scale })
    }

    /// p_i, normalised.
    #[inline(always)]
    pub fn at(&self, i: usize) -> f64 {
        match self.weights {
            None => self.scale,
            Some(w) => w[i] * self.scale,
        }
    }

    /// The raw weights of samples start..start+len (None for the uniform reference).
    #[inline(always)]
    pub fn slice(&self, start: usize, len: usize) -> Option<&'a [f64]> {
        self.weights.map(|w| &w[start..start + len])
    }

    pub fn is_uniform(&self) -> bool {
        self.weights.is_none()
    }

    /// The factor that normalises the raw weights (1/n for the uniform reference).
    #[inline(always)]
    pub fn scale(&self) -> f64 {
        self.scale
    }
}

/// A validated problem: finite losses, a reference, and the extremes on the support of p.
pub struct Batch<'a, T: Real> {
    pub losses: &'a [T],
    pub reference: Reference<'a>,
    /// Largest loss over {i : p_i > 0}.
    pub max: f64,
    /// Smallest loss over {i : p_i > 0}.
    pub min: f64,
    /// Mass of p at the largest loss (ties summed): the worst case at large radius puts all
    /// mass there, in proportion to p.
    pub mass_at_max: f64,
}

impl<'a, T: Real> Batch<'a, T> {
    /// One pass: rejects NaN and inf (anywhere, also where p is zero) and finds the extremes.
    pub fn new(losses: &'a [T], reference: Reference<'a>) -> Result<Self> {
        if losses.is_empty() {
            return Err(CoreError::Losses("losses are empty: a batch needs at least one sample".into()));
        }
        let Some(extremes) = passes::extremes(losses, &reference) else {
            let (i, l) = losses
                .iter()
                .enumerate()
                .find(|(_, l)| !l.to_f64().is_finite())
                .map(|(i, l)| (i, l.to_f64()))
                .unwrap_or((0, f64::NAN));
            return Err(CoreError::Losses(format!("losses must be finite, got {l} at index {i}")));
        };
        let Extremes { max, min, mass_at_max } = extremes;
        Ok(Batch { losses, reference, max, min, mass_at_max })
    }

    /// Never 0: `new` rejects an empty batch, so there is no `is_empty`.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.losses.len()
    }

    /// All losses on the support are equal: every set's worst case is q = p.
    pub fn is_flat(&self) -> bool {
        self.max == self.min
    }

    /// The affine map to centred, scaled losses u in [-1, 0] (u = 0 at the max).
    pub fn scale(&self) -> Scale {
        Scale::new(self.max, self.min)
    }

    /// Mass of p on the losses strictly below the max.
    pub fn mass_below_max(&self) -> f64 {
        // The normalised masses sum to one up to rounding; clamp so a rounding error never
        // makes a set look saturated or not.
        (1.0 - self.mass_at_max).max(0.0)
    }

    /// V within [min, max] of the support, where it lies in exact arithmetic: weights summing
    /// to 1 + eps times losses at f64::MAX would overflow sum q l to inf.
    pub fn clamp_value(&self, value: f64) -> f64 {
        value.clamp(self.min, self.max)
    }

    /// sum_i q_i l_i over the written weights.
    pub fn value_of(&self, weights: &[T]) -> f64 {
        let mut value = 0.0;
        for (&l, &q) in self.losses.iter().zip(weights) {
            value += l.to_f64() * q.to_f64();
        }
        value
    }

    /// q = p. Returns V = sum p l.
    pub fn write_reference(&self, out: &mut [T]) -> f64 {
        let [value] = passes::write(self.losses, &self.reference, out, |_, p| p, |l, q| [q * l]);
        value
    }

    /// All mass on the arg-max of the losses, ties shared in proportion to p. Returns V = max.
    pub fn write_argmax(&self, out: &mut [T]) -> f64 {
        // p / mass, not p * (1 / mass): a subnormal mass has no finite reciprocal.
        let (max, mass) = (self.max, self.mass_at_max);
        passes::write(
            self.losses,
            &self.reference,
            out,
            |l, p| if l == max && p > 0.0 { p / mass } else { 0.0 },
            |_, _| [],
        );
        max
    }

    /// Writes q_i = w_i / sum w for unnormalised weights w_i = weight(l_i, p_i) (zero where
    /// p_i = 0 by the caller's formula) and returns V = sum q l. Two passes.
    pub fn write_normalised(&self, out: &mut [T], weight: impl Fn(f64, f64) -> f64 + Sync) -> f64 {
        let [total] = passes::write(self.losses, &self.reference, out, weight, |_, w| [w]);
        passes::normalise(self.losses, out, total)
    }
}

/// u = (l - max) / (max - min), computed without overflow for losses near +-1e308 and
/// without underflow for ranges that are subnormal (docs/method.md#numerics).
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pre: f64,
    max_pre: f64,
    inv_range: f64,
}

impl Scale {
    fn new(max: f64, min: f64) -> Self {
        // Halving keeps max - min finite for any two finite losses; a tiny range is first
        // lifted by 2^600 so that 1 / range stays finite.
        // A flat support (max = min) keeps 0.5: lifted, a loss beyond 1e120 would overflow to
        // inf - inf = NaN (the wasserstein set scales flat batches too).
        let pre = if max * 0.5 - min * 0.5 >= 1e-290 || max == min { 0.5 } else { f64::powi(2.0, 600) };
        let range = max * pre - min * pre;
        Scale { pre, max_pre: max * pre, inv_range: if range > 0.0 { 1.0 / range } else { 0.0 } }
    }

    /// Clamped to [-1, 0]: exact on the support of p; elsewhere (p_i = 0, where a loss may lie
    /// far outside the support's range) it keeps every term finite, and p_i = 0 zeroes it.
    #[inline(always)]
    pub fn u(&self, l: f64) -> f64 {
        ((l * self.pre - self.max_pre) * self.inv_range).clamp(-1.0, 0.0)
    }

    /// (pre, max_pre, inv_range): what `u` computes with, for the AVX2 kernels (x86_64 only).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn parts(&self) -> (f64, f64, f64) {
        (self.pre, self.max_pre, self.inv_range)
    }

    /// The inverse map, for reporting a threshold in the losses' units.
    pub fn loss(&self, u: f64) -> f64 {
        (u / self.inv_range + self.max_pre) / self.pre
    }

    /// A difference of losses (a temperature, a penalty) in the units of u.
    pub fn to_u_units(self, dl: f64) -> f64 {
        (dl * self.pre) * self.inv_range
    }

    /// A difference in the units of u back in the losses' units.
    pub fn to_loss_units(self, du: f64) -> f64 {
        (du / self.inv_range) / self.pre
    }
}

#[cfg(test)]
mod tests {
    use super::{Batch, Reference};
    use crate::error::CoreError;

    #[test]
    fn a_flat_support_of_huge_losses_scales_to_zero_not_nan() {
        let reference = [181.0, 0.0];
        for flat in [-1.7976931348623157e308, -1e300, 1e150, -1.0] {
            let losses = [flat, 0.0];
            let batch = Batch::new(&losses[..], Reference::weighted(&reference, 2).unwrap()).unwrap();
            let scale = batch.scale();
            assert_eq!(scale.u(flat), 0.0, "u({flat:e})");
            assert!(!scale.u(0.0).is_nan());
        }
    }

    /// Found by fuzzing: subnormal weights sum below 1/f64::MAX, and normalising them gave
    /// p = inf instead of an error.
    #[test]
    fn a_reference_too_small_to_normalise_is_an_error() {
        for weights in [vec![7.253001e-317], vec![5e-324, 0.0, 5e-324]] {
            let n = weights.len();
            assert!(matches!(Reference::weighted(&weights, n), Err(CoreError::Reference(_))));
        }
        let smallest_normal = [f64::MIN_POSITIVE, 0.0];
        assert!(Reference::weighted(&smallest_normal, 2).unwrap().at(0) == 1.0);
    }
}
