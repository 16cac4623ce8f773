//! The `radius=` argument: a number, or `"calibrated"` with an optional `confidence=`
//! (docs/method.md#calibrated-radius). The checks are worded for the Python call; the number
//! comes from `crate::calibrated`.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString};

use crate::calibrated::{self, DEFAULT_CONFIDENCE};
use crate::CoreError;

/// What `radius=` asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Radius {
    Number(f64),
    /// The calibrated radius at this confidence, once the problem's size is known.
    Calibrated(f64),
}

/// The sets whose radius can be calibrated: the phi-divergences with phi''(1) = 1.
const CALIBRATED_SETS: [&str; 2] = ["chi2", "kl"];

/// Checks `radius=` and `confidence=` together. `ambiguity` is the set's name, or None for a
/// value that names no set (its repr is then in `ambiguity_repr`).
pub(super) fn requested(
    radius: Option<&Bound<'_, PyAny>>,
    confidence: Option<&Bound<'_, PyAny>>,
    ambiguity: Option<&str>,
    ambiguity_repr: impl FnOnce() -> PyResult<String>,
    penalty_given: bool,
) -> PyResult<Option<Radius>> {
    let Some(name) = radius.filter(|r| r.is_instance_of::<PyString>()) else {
        if confidence.is_some() {
            let radius = match radius {
                Some(r) => r.repr()?.to_cow()?.into_owned(),
                None => "None".into(),
            };
            return Err(budget(format!(
                "confidence= sets the level of radius=\"calibrated\"; it means nothing with radius={radius}"
            )));
        }
        return radius.map(|r| float_argument(r, "radius").map(Radius::Number)).transpose();
    };
    if name.cast::<PyString>()?.to_cow()? != "calibrated" {
        return Err(budget(format!("radius must be a number or \"calibrated\", got {}", name.repr()?)));
    }
    if !ambiguity.is_some_and(|a| CALIBRATED_SETS.contains(&a)) {
        return Err(budget(format!(
            "radius=\"calibrated\" is defined for the {} sets, not {}",
            CALIBRATED_SETS.join(" and "),
            ambiguity_repr()?
        )));
    }
    if penalty_given {
        return Err(budget("radius=\"calibrated\" is a constrained form: give it or penalty=, not both".into()));
    }
    let confidence = confidence.map(checked_confidence).transpose()?.unwrap_or(DEFAULT_CONFIDENCE);
    Ok(Some(Radius::Calibrated(confidence)))
}

/// A confidence level in (0.5, 1).
pub(super) fn checked_confidence(confidence: &Bound<'_, PyAny>) -> PyResult<f64> {
    let number = match confidence.is_instance_of::<PyBool>() || confidence.is_instance_of::<PyString>() {
        true => None,
        false => confidence.extract::<f64>().ok(),
    };
    let Some(value) = number else {
        return Err(budget(format!("confidence must be a number in (0.5, 1), got {}", confidence.repr()?)));
    };
    if !(0.5 < value && value < 1.0) {
        return Err(budget(format!(
            "confidence must be in (0.5, 1) (a one-sided level such as 0.95), got {}",
            confidence.repr()?
        )));
    }
    Ok(value)
}

/// The number to solve with: the radius itself, or the calibrated radius of a problem of
/// `size` samples (or groups).
pub(super) fn resolved(
    radius: Option<Radius>,
    size: impl FnOnce() -> Result<usize, CoreError>,
) -> PyResult<Option<f64>> {
    Ok(match radius {
        None => None,
        Some(Radius::Number(r)) => Some(r),
        // An empty batch has size 0: the solve reports it.
        Some(Radius::Calibrated(confidence)) => Some(calibrated::calibrated_radius(size()?.max(1), confidence)),
    })
}

/// A float argument, its error noted as PyO3 notes those of the arguments it converts.
pub(super) fn float_argument(value: &Bound<'_, PyAny>, name: &str) -> PyResult<f64> {
    value.extract::<f64>().inspect_err(|error| {
        // A note that cannot be added leaves the error as it is.
        let _ = error.value(value.py()).call_method1("add_note", (format!("while processing '{name}'"),));
    })
}

fn budget(message: String) -> PyErr {
    CoreError::Budget(message).into()
}
