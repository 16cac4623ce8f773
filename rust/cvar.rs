//! CVaR set: q_i <= p_i / alpha, alpha in (0, 1]. The worst case fills the largest losses first
//! up to p_i / alpha each until the mass reaches one (SPEC.md section 2); the loss where it
//! stops is the alpha-quantile eta of the dual V* = min_eta eta + (1/alpha) sum p (l - eta)_+.
//! Losses tied at eta share what is left in proportion to p.

use crate::batch::Batch;
use crate::real::Real;
use crate::select::upper_quantile;
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
    let p = &batch.reference;
    let mut items: Vec<(f64, f64)> = batch
        .losses
        .iter()
        .enumerate()
        .map(|(i, &l)| (l.to_f64(), p.at(i)))
        .filter(|&(_, mass)| mass > 0.0)
        .collect();
    let eta = upper_quantile(&mut items, alpha);
    let (mut above, mut at) = (0.0, 0.0);
    for (i, &l) in batch.losses.iter().enumerate() {
        let l = l.to_f64();
        if l > eta {
            above += p.at(i);
        } else if l == eta {
            at += p.at(i);
        }
    }
    // Mass left for the losses tied at eta, per unit of their p.
    let share = ((alpha - above) / at).clamp(0.0, 1.0) / alpha;
    let cap = 1.0 / alpha;
    let mut value = 0.0;
    for (i, (o, &l)) in out.iter_mut().zip(batch.losses).enumerate() {
        let l = l.to_f64();
        let q = if l > eta {
            p.at(i) * cap
        } else if l == eta {
            p.at(i) * share
        } else {
            0.0
        };
        *o = T::from_f64(q);
        value += q * l;
    }
    Outcome { value, dual: Some(eta), iterations: 1 }
}
