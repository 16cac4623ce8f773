//! The Python side of the core's errors: one exception class per kind of `CoreError`, each a
//! subclass of `DroRebelError` and so of `ValueError` (code that catches `ValueError` keeps
//! working), and one mapping of a panic, wherever it happens.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::CoreError;

create_exception!(
    dro_rebel,
    DroRebelError,
    PyValueError,
    "An input that defines no problem; every error dro_rebel raises for its input derives from it."
);
create_exception!(dro_rebel, LossesError, DroRebelError, "Losses that are empty, NaN, infinite or not real numbers.");
create_exception!(
    dro_rebel,
    ReferenceDistributionError,
    DroRebelError,
    "A reference distribution that is negative, non-finite, all zero or of the wrong shape."
);
create_exception!(
    dro_rebel,
    GroupsError,
    DroRebelError,
    "Group labels that are negative, not integers or of the wrong shape."
);
create_exception!(
    dro_rebel,
    BudgetError,
    DroRebelError,
    "A radius, penalty, alpha, confidence or tol that is missing, doubled, out of range or not meant for the set."
);
create_exception!(
    dro_rebel,
    ShapeError,
    DroRebelError,
    "Shapes that do not fit together, or losses that are not 1-D or 2-D."
);
create_exception!(dro_rebel, AmbiguityError, DroRebelError, "An ambiguity set dro_rebel does not know.");
create_exception!(
    dro_rebel,
    GeometryError,
    DroRebelError,
    "Wasserstein geometry (features, cost, p) that cannot define distances, or given to another set."
);
create_exception!(
    dro_rebel,
    InternalError,
    PyRuntimeError,
    "A bug in dro_rebel's core (a panic): please report it with the input."
);

impl From<CoreError> for PyErr {
    fn from(error: CoreError) -> PyErr {
        match error {
            CoreError::Losses(m) => LossesError::new_err(m),
            CoreError::Reference(m) => ReferenceDistributionError::new_err(m),
            CoreError::Groups(m) => GroupsError::new_err(m),
            CoreError::Budget(m) => BudgetError::new_err(m),
            CoreError::Shape(m) => ShapeError::new_err(m),
            CoreError::Ambiguity(m) => AmbiguityError::new_err(m),
            CoreError::Geometry(m) => GeometryError::new_err(m),
        }
    }
}

/// Runs the body of a Python entry point; a panic anywhere under it (in this thread, in a
/// worker thread of the solve, with or without the GIL) becomes an `InternalError`.
pub(super) fn guarded<R>(body: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(InternalError::new_err(format!(
            "internal error in dro_rebel's core (a bug: please report it with the input): {message}"
        )))
    })
}
