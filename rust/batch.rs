//! One validated problem: the losses, the reference distribution p, and what one pass over
//! them tells every solver (the largest and smallest loss on the support of p, the mass of p
//! at the largest loss). Also the helpers that write the two closed-form answers every set
//! shares: q = p (radius 0) and all mass on the arg-max (a radius at or beyond the largest
//! useful one).

use crate::error::{CoreError, Result};
use crate::real::Real;

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
                return Err(CoreError::Reference(format!(
                    "reference must be finite, got {w} at index {i}"
                )));
            }
            if w < 0.0 {
                return Err(CoreError::Reference(format!(
                    "reference must be non-negative, got {w} at index {i}"
                )));
            }
            total += w;
        }
        if total <= 0.0 {
            return Err(CoreError::Reference("reference is all zero: it must have positive mass".into()));
        }
        if !total.is_finite() {
            return Err(CoreError::Reference("reference sums to infinity: rescale it".into()));
        }
        Ok(Reference { weights: Some(weights), scale: 1.0 / total })
    }

    /// p_i, normalised.
    #[inline(always)]
    pub fn at(&self, i: usize) -> f64 {
        match self.weights {
            None => self.scale,
            Some(w) => w[i] * self.scale,
        }
    }

    pub fn is_uniform(&self) -> bool {
        self.weights.is_none()
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
        let (mut max, mut min, mut mass_at_max) = (f64::NEG_INFINITY, f64::INFINITY, 0.0);
        for (i, &l) in losses.iter().enumerate() {
            let l = l.to_f64();
            if !l.is_finite() {
                return Err(CoreError::Losses(format!(
                    "losses must be finite, got {l} at index {i}"
                )));
            }
            let p = reference.at(i);
            if p > 0.0 {
                if l > max {
                    max = l;
                    mass_at_max = p;
                } else if l == max {
                    mass_at_max += p;
                }
                min = min.min(l);
            }
        }
        Ok(Batch { losses, reference, max, min, mass_at_max })
    }

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

    /// sum_i q_i l_i over the written weights.
    pub fn value_of(&self, weights: &[T]) -> f64 {
        self.losses.iter().zip(weights).map(|(&l, &q)| l.to_f64() * q.to_f64()).sum()
    }

    /// q = p. Returns V = sum p l.
    pub fn write_reference(&self, out: &mut [T]) -> f64 {
        let mut value = 0.0;
        for (i, (o, &l)) in out.iter_mut().zip(self.losses).enumerate() {
            let p = self.reference.at(i);
            *o = T::from_f64(p);
            value += p * l.to_f64();
        }
        value
    }

    /// All mass on the arg-max of the losses, ties shared in proportion to p. Returns V = max.
    pub fn write_argmax(&self, out: &mut [T]) -> f64 {
        let inv = 1.0 / self.mass_at_max;
        for (i, (o, &l)) in out.iter_mut().zip(self.losses).enumerate() {
            let p = self.reference.at(i);
            *o = T::from_f64(if l.to_f64() == self.max && p > 0.0 { p * inv } else { 0.0 });
        }
        self.max
    }

    /// Writes q_i = w_i / sum w for unnormalised weights w_i = weight(i, l_i) (zero where
    /// p_i = 0 by the caller's formula) and returns V = sum q l. Two passes.
    pub fn write_normalised(&self, out: &mut [T], weight: impl Fn(usize, f64) -> f64) -> f64 {
        let mut total = 0.0;
        for (i, (o, &l)) in out.iter_mut().zip(self.losses).enumerate() {
            let w = weight(i, l.to_f64());
            total += w;
            *o = T::from_f64(w);
        }
        let inv = 1.0 / total;
        let mut value = 0.0;
        for (o, &l) in out.iter_mut().zip(self.losses) {
            let q = o.to_f64() * inv;
            *o = T::from_f64(q);
            value += q * l.to_f64();
        }
        value
    }
}

/// u = (l - max) / (max - min), computed without overflow for losses near +-1e308 and
/// without underflow for ranges that are subnormal (SPEC.md section 2, edge cases).
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
        let pre = if max * 0.5 - min * 0.5 >= 1e-290 { 0.5 } else { f64::powi(2.0, 600) };
        let range = max * pre - min * pre;
        Scale { pre, max_pre: max * pre, inv_range: if range > 0.0 { 1.0 / range } else { 0.0 } }
    }

    #[inline(always)]
    pub fn u(&self, l: f64) -> f64 {
        (l * self.pre - self.max_pre) * self.inv_range
    }

    /// The inverse map, for reporting a threshold in the losses' units.
    pub fn loss(&self, u: f64) -> f64 {
        (u / self.inv_range + self.max_pre) / self.pre
    }

    /// A difference of losses (a temperature, a penalty) in the units of u.
    pub fn to_u_units(&self, dl: f64) -> f64 {
        (dl * self.pre) * self.inv_range
    }

    /// A difference in the units of u back in the losses' units.
    pub fn to_loss_units(&self, du: f64) -> f64 {
        (du / self.inv_range) / self.pre
    }
}
