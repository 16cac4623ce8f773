//! The calibrated radius (docs/method.md#calibrated-radius):
//!
//! ```text
//! rho = q / (2n),   q = z^2,   z = Phi^-1(confidence),
//! ```
//!
//! q the (2 confidence - 1) quantile of the chi-square distribution with one degree of freedom
//! (chi2_1 is the law of Z^2, so P(Z^2 <= z^2) = 2 confidence - 1), n the samples of a row or,
//! with groups, the number of distinct groups. V* of the chi2 or KL ball of that radius is then
//! an asymptotically exact one-sided upper confidence bound on the mean loss.

use crate::error::{CoreError, Result};

/// The level of `radius="calibrated"` when the caller gives none.
pub const DEFAULT_CONFIDENCE: f64 = 0.95;

/// rho = Phi^-1(confidence)^2 / (2n), for n >= 1 and confidence in (0.5, 1).
pub fn calibrated_radius(n: usize, confidence: f64) -> f64 {
    let z = inverse_normal_cdf(confidence);
    z * z / (2.0 * n as f64)
}

/// n of the calibrated radius for rows of `columns` losses: `columns`, or the number of distinct
/// labels of `groups` (one row of labels shared by every row, or one per row; then every row
/// must have the same count, since a call has one radius).
pub fn problem_size(columns: usize, groups: Option<&[i64]>) -> Result<usize> {
    let Some(labels) = groups else { return Ok(columns) };
    let mut counts: Vec<usize> = labels.chunks(columns.max(1)).map(distinct).collect();
    counts.sort_unstable();
    counts.dedup();
    match counts[..] {
        [] => Ok(columns),
        [count] => Ok(count),
        _ => Err(CoreError::Groups(format!(
            "radius=\"calibrated\" with one row of groups per problem needs the same number of groups in every row \
             (one radius for the call), got counts {counts:?}"
        ))),
    }
}

fn distinct(labels: &[i64]) -> usize {
    let mut sorted = labels.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.len()
}

/// Phi^-1(p) for p in (0, 1): Wichura's AS241 (PPND16, Applied Statistics 37, 1988), relative
/// error about 1e-16; the same coefficients, digit for digit, and the same operations as Python's
/// `statistics.NormalDist.inv_cdf`.
pub fn inverse_normal_cdf(p: f64) -> f64 {
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180625 - q * q;
        return horner(&CENTRAL_NUM, r) * q / horner(&CENTRAL_DEN, r);
    }
    let r = (-(if q <= 0.0 { p } else { 1.0 - p }).ln()).sqrt();
    let x = if r <= 5.0 {
        horner(&NEAR_NUM, r - 1.6) / horner(&NEAR_DEN, r - 1.6)
    } else {
        horner(&FAR_NUM, r - 5.0) / horner(&FAR_DEN, r - 5.0)
    };
    if q < 0.0 {
        -x
    } else {
        x
    }
}

/// c0 r^7 + c1 r^6 + ... + c7, as ((c0 r + c1) r + c2) ...
fn horner(coefficients: &[f64; 8], r: f64) -> f64 {
    coefficients[1..].iter().fold(coefficients[0], |sum, &c| sum * r + c)
}

// The published coefficients, with more digits than a float holds.
#[allow(clippy::excessive_precision)]
const CENTRAL_NUM: [f64; 8] = [
    2.5090809287301226727e+3,
    3.3430575583588128105e+4,
    6.7265770927008700853e+4,
    4.5921953931549871457e+4,
    1.3731693765509461125e+4,
    1.9715909503065514427e+3,
    1.3314166789178437745e+2,
    3.3871328727963666080e+0,
];
#[allow(clippy::excessive_precision)]
const CENTRAL_DEN: [f64; 8] = [
    5.2264952788528545610e+3,
    2.8729085735721942674e+4,
    3.9307895800092710610e+4,
    2.1213794301586595867e+4,
    5.3941960214247511077e+3,
    6.8718700749205790830e+2,
    4.2313330701600911252e+1,
    1.0,
];
#[allow(clippy::excessive_precision)]
const NEAR_NUM: [f64; 8] = [
    7.74545014278341407640e-4,
    2.27238449892691845833e-2,
    2.41780725177450611770e-1,
    1.27045825245236838258e+0,
    3.64784832476320460504e+0,
    5.76949722146069140550e+0,
    4.63033784615654529590e+0,
    1.42343711074968357734e+0,
];
#[allow(clippy::excessive_precision)]
const NEAR_DEN: [f64; 8] = [
    1.05075007164441684324e-9,
    5.47593808499534494600e-4,
    1.51986665636164571966e-2,
    1.48103976427480074590e-1,
    6.89767334985100004550e-1,
    1.67638483018380384940e+0,
    2.05319162663775882187e+0,
    1.0,
];
#[allow(clippy::excessive_precision)]
const FAR_NUM: [f64; 8] = [
    2.01033439929228813265e-7,
    2.71155556874348757815e-5,
    1.24266094738807843860e-3,
    2.65321895265761230930e-2,
    2.96560571828504891230e-1,
    1.78482653991729133580e+0,
    5.46378491116411436990e+0,
    6.65790464350110377720e+0,
];
#[allow(clippy::excessive_precision)]
const FAR_DEN: [f64; 8] = [
    2.04426310338993978564e-15,
    1.42151175831644588870e-7,
    1.84631831751005468180e-5,
    7.86869131145613259100e-4,
    1.48753612908506148525e-2,
    1.36929880922735805310e-1,
    5.99832206555887937690e-1,
    1.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_known_to_many_digits() {
        // scipy.stats.norm.ppf
        for (p, z) in [
            (0.975, 1.959_963_984_540_054),
            (0.95, 1.644_853_626_951_472_2),
            (0.5, 0.0),
            (0.999, 3.090_232_306_167_813),
            (1e-10, -6.361_340_902_404_056),
            (1e-300, -37.047_096_299_361_2),
        ] {
            let got = inverse_normal_cdf(p);
            assert!((got - z).abs() <= 1e-15 * z.abs(), "{p}: {got} vs {z}");
        }
    }

    #[test]
    fn at_95_percent_the_radius_is_1_353_over_n() {
        assert!((calibrated_radius(1, DEFAULT_CONFIDENCE) - 1.352_771_727_047_702).abs() < 1e-14);
        assert_eq!(calibrated_radius(200, DEFAULT_CONFIDENCE), calibrated_radius(1, DEFAULT_CONFIDENCE) / 200.0);
    }

    #[test]
    fn groups_count_once_per_row_and_rows_must_agree() {
        assert_eq!(problem_size(4, None).unwrap(), 4);
        assert_eq!(problem_size(4, Some(&[7, 3, 7, 9])).unwrap(), 3);
        assert_eq!(problem_size(2, Some(&[0, 1, 5, 6])).unwrap(), 2);
        let error = problem_size(2, Some(&[0, 1, 5, 5])).unwrap_err();
        assert!(error.to_string().contains("got counts [1, 2]"), "{error}");
    }
}
