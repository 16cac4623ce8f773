//! Total-variation ball: (1/2) sum_i |q_i - p_i| <= rho. The worst case moves rho of mass from
//! the smallest losses onto the largest (ties at the max share it in proportion to p, and the
//! smallest losses tied at the cut give up mass in proportion to p). No dual variable.

use crate::batch::Batch;
use crate::real::Real;
use crate::select::upper_quantile;
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
    let p = &batch.reference;
    // The lower quantile of the losses is the upper quantile of their negatives.
    let mut items: Vec<(f64, f64)> = batch
        .losses
        .iter()
        .enumerate()
        .map(|(i, &l)| (-l.to_f64(), p.at(i)))
        .filter(|&(_, mass)| mass > 0.0)
        .collect();
    let cut = -upper_quantile(&mut items, radius);
    if cut >= batch.max {
        let value = batch.write_argmax(out);
        return Outcome { value, dual: None, iterations: 0 };
    }
    let (mut below, mut at) = (0.0, 0.0);
    for (i, &l) in batch.losses.iter().enumerate() {
        let l = l.to_f64();
        if l < cut {
            below += p.at(i);
        } else if l == cut {
            at += p.at(i);
        }
    }
    // Fraction of p kept by the losses tied at the cut, and the gain of those at the max.
    let kept = (1.0 - (radius - below) / at).clamp(0.0, 1.0);
    let gain = 1.0 + radius / batch.mass_at_max;
    let mut value = 0.0;
    for (i, (o, &l)) in out.iter_mut().zip(batch.losses).enumerate() {
        let l = l.to_f64();
        let q = if l == batch.max {
            p.at(i) * gain
        } else if l < cut {
            0.0
        } else if l == cut {
            p.at(i) * kept
        } else {
            p.at(i)
        };
        *o = T::from_f64(q);
        value += q * l;
    }
    Outcome { value, dual: None, iterations: 1 }
}
