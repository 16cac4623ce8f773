//! Helpers for the unit tests: a small deterministic generator and the invariants of
//! docs/method.md#invariants that every set's weights must satisfy.

use crate::{solve, Ambiguity, Budget, Options, Solution};

/// xorshift64*: deterministic, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Losses with ties (rounded values) and a random scale and sign.
    pub fn losses(&mut self, n: usize, scale: f64) -> Vec<f64> {
        let ties = self.uniform() < 0.3;
        (0..n)
            .map(|_| {
                let x = self.uniform() * 4.0 - 1.0;
                (if ties { x.round() } else { x }) * scale
            })
            .collect()
    }

    /// A reference with some zeros.
    pub fn reference(&mut self, n: usize) -> Vec<f64> {
        let mut p: Vec<f64> = (0..n).map(|_| if self.uniform() < 0.2 { 0.0 } else { self.uniform() }).collect();
        if p.iter().all(|&x| x == 0.0) {
            p[0] = 1.0;
        }
        p
    }
}

/// The reference weights normalised to a distribution p.
pub fn normalised(weights: &[f64]) -> Vec<f64> {
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}

pub fn solve_f64(losses: &[f64], options: &Options) -> (Vec<f64>, Solution) {
    let mut q = vec![f64::NAN; losses.len()];
    let solution = solve(losses, options, &mut q).expect("valid problem");
    (q, solution)
}

/// The invariants that hold for every set: q a distribution on the support of p,
/// V = sum q l, mean_p(l) <= V <= max l (up to rounding on the losses' scale).
pub fn check_invariants(losses: &[f64], reference: Option<&[f64]>, q: &[f64], solution: &Solution) {
    let n = losses.len();
    let p: Vec<f64> = match reference {
        None => vec![1.0 / n as f64; n],
        Some(w) => {
            let total: f64 = w.iter().sum();
            w.iter().map(|x| x / total).collect()
        }
    };
    let sum: f64 = q.iter().sum();
    assert!((sum - 1.0).abs() < 1e-12, "weights sum to {sum}");
    for i in 0..n {
        assert!(q[i] >= 0.0, "negative weight {} at {i}", q[i]);
        if p[i] == 0.0 {
            assert_eq!(q[i], 0.0, "mass on a point outside the support");
        }
    }
    let scale = losses.iter().fold(0.0_f64, |m, l| m.max(l.abs()));
    let slack = 1e-10 * scale;
    let value: f64 = q.iter().zip(losses).map(|(a, b)| a * b).sum();
    assert!((value - solution.value).abs() <= slack, "value {} != sum q l {value}", solution.value);
    let mean: f64 = p.iter().zip(losses).map(|(a, b)| a * b).sum();
    let max = losses.iter().zip(&p).filter(|(_, &pi)| pi > 0.0).fold(f64::NEG_INFINITY, |m, (l, _)| m.max(*l));
    assert!(solution.value >= mean - slack, "V {} below the mean {mean}", solution.value);
    assert!(solution.value <= max + slack, "V {} above the max {max}", solution.value);
}

pub fn options(set: Ambiguity, budget: Budget) -> Options<'static> {
    Options::new(set, budget)
}
