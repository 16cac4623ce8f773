//! The only module that knows Python: argument conversion, dtype dispatch, releasing the GIL
//! for large solves, and mapping the core's errors to `ValueError`. The Python package
//! (`dro_rebel._api`) hands in contiguous float64/float32 arrays; anything else is a
//! `TypeError` here.

use numpy::{Element, IntoPyArray, PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

use crate::{Ambiguity, Budget, CoreError, Geometry, Options, Real, Solution};

impl From<CoreError> for PyErr {
    fn from(error: CoreError) -> PyErr {
        PyValueError::new_err(error.to_string())
    }
}

pyo3::create_exception!(
    _core,
    NotNative,
    PyTypeError,
    "The losses are not a C-contiguous float64/float32 numpy array: dro_rebel.robust_weights \
     then converts them and calls again (never raised to its callers)."
);

/// Python's repr of a shape: (2, 3), (5,), ().
fn shape_repr(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

/// The set named `name`. Names written in Python source are interned, so comparing the object
/// with the interned names usually settles it; other strings are decoded, which the abi3 API
/// of Python 3.9 does by way of a new bytes object (300 of the 5,200 instructions a call on one
/// loss took).
fn ambiguity_named(name: &Bound<'_, PyAny>) -> PyResult<Ambiguity> {
    let py = name.py();
    let interned = [
        (intern!(py, "kl"), Ambiguity::Kl),
        (intern!(py, "chi2"), Ambiguity::Chi2),
        (intern!(py, "cvar"), Ambiguity::Cvar),
        (intern!(py, "tv"), Ambiguity::Tv),
        (intern!(py, "wasserstein"), Ambiguity::Wasserstein),
    ];
    if let Some((_, ambiguity)) = interned.iter().find(|(n, _)| name.is(n)) {
        return Ok(*ambiguity);
    }
    let name = name.cast::<PyString>().map_err(|_| {
        let type_name = name.get_type().name().map_or_else(|_| "?".into(), |n| n.to_string());
        PyTypeError::new_err(format!("ambiguity must be a str such as \"kl\", got {type_name}"))
    })?;
    Ok(name.to_cow()?.parse()?)
}

/// Above this many losses the solve runs with the GIL released; below, releasing costs more
/// than it frees.
const DETACH_MIN_ELEMENTS: usize = 4096;

/// The arguments every entry point shares, borrowed from Python for the length of one call.
struct Arguments<'py> {
    ambiguity: Ambiguity,
    budget: Budget,
    tol: f64,
    order: f64,
    reference: Option<PyReadonlyArrayDyn<'py, f64>>,
    groups: Option<PyReadonlyArrayDyn<'py, i64>>,
    features: Option<PyReadonlyArrayDyn<'py, f64>>,
    cost: Option<PyReadonlyArrayDyn<'py, f64>>,
}

impl<'py> Arguments<'py> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        ambiguity: &Bound<'py, PyAny>,
        radius: Option<f64>,
        penalty: Option<f64>,
        alpha: Option<f64>,
        reference: Option<&Bound<'py, PyAny>>,
        groups: Option<&Bound<'py, PyAny>>,
        tol: Option<f64>,
        order: f64,
        features: Option<&Bound<'py, PyAny>>,
        cost: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Self> {
        let ambiguity = ambiguity_named(ambiguity)?;
        let budget = Budget::new(ambiguity, radius, penalty, alpha)?;
        if ambiguity == Ambiguity::Wasserstein && !(order >= 1.0 && order.is_finite()) {
            return Err(PyValueError::new_err(format!("p must be a finite number >= 1, got {order}")));
        }
        Ok(Arguments {
            ambiguity,
            budget,
            tol: tol.unwrap_or(crate::DEFAULT_TOL),
            order,
            reference: reference.map(|r| readonly::<f64>(r, "reference")).transpose()?,
            groups: groups.map(|g| readonly::<i64>(g, "groups")).transpose()?,
            features: features.map(|f| readonly::<f64>(f, "features")).transpose()?,
            cost: cost.map(|c| readonly::<f64>(c, "cost")).transpose()?,
        })
    }

    fn options(&self) -> PyResult<Options<'_>> {
        let geometry = match (&self.features, &self.cost) {
            (Some(_), Some(_)) => return Err(PyValueError::new_err("give one of features= and cost=, not both")),
            (Some(f), None) => {
                let shape = f.shape();
                if shape.len() != 2 {
                    return Err(PyValueError::new_err("features must be 2-D (n, d)"));
                }
                Some(Geometry::Features { data: contiguous(f, "features")?, dim: shape[1] })
            }
            (None, Some(c)) => Some(Geometry::Cost(contiguous(c, "cost")?)),
            (None, None) => None,
        };
        if geometry.is_some() && self.ambiguity != Ambiguity::Wasserstein {
            return Err(PyValueError::new_err("features= and cost= are for the wasserstein set only"));
        }
        Ok(Options {
            ambiguity: self.ambiguity,
            budget: self.budget,
            reference: self.reference.as_ref().map(|r| contiguous(r, "reference")).transpose()?,
            groups: self.groups.as_ref().map(|g| contiguous(g, "groups")).transpose()?,
            tol: self.tol,
            geometry,
            order: self.order,
        })
    }
}

fn readonly<'py, T: Element>(value: &Bound<'py, PyAny>, name: &str) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    let array = value
        .cast::<PyArrayDyn<T>>()
        .map_err(|_| PyTypeError::new_err(format!("{name} must be a numpy array of {}", std::any::type_name::<T>())))?;
    array.try_readonly().map_err(|e| PyValueError::new_err(format!("{name}: {e}")))
}

fn contiguous<'a, T: Element>(array: &'a PyReadonlyArrayDyn<'_, T>, name: &str) -> PyResult<&'a [T]> {
    array.as_slice().map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous")))
}

/// The weights of every row, and one solution per row.
fn solve_any<'py, T: Real + Element>(
    py: Python<'py>,
    losses: &Bound<'py, PyArrayDyn<T>>,
    arguments: &Arguments<'py>,
) -> PyResult<(Bound<'py, PyArrayDyn<T>>, Vec<Solution>)> {
    let shape = losses.shape();
    if shape.is_empty() || shape.len() > 2 {
        return Err(PyValueError::new_err(format!(
            "losses must be 1-D (one problem) or 2-D (one problem per row), got shape {}",
            shape_repr(shape)
        )));
    }
    if !losses.is_c_contiguous() {
        return Err(NotNative::new_err("losses must be C-contiguous"));
    }
    let columns = *shape.last().unwrap_or(&0);
    // SAFETY: C-contiguous (checked), and nothing in this module writes to the losses or holds
    // a mutable view of them. A readonly borrow (rust-numpy's tracking through its global table
    // of borrows) would guard against no more than that, and cost 150 ns of a 1 us call at n = 64.
    let values = unsafe { losses.as_slice() }.map_err(|e| PyValueError::new_err(format!("losses: {e}")))?;
    let options = arguments.options()?;
    // SAFETY: a fresh array of the same shape; every element is written by the solver before
    // Python can see it (on error the array is dropped unread).
    let out = unsafe { PyArrayDyn::<T>::new(py, shape, false) };
    // SAFETY: the fresh array is C-contiguous and no one else has seen it yet.
    let out_slice = unsafe { out.as_slice_mut() }
        .map_err(|_| PyRuntimeError::new_err("internal error: output is not contiguous"))?;
    let mut work = move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::solve_rows(values, columns, &options, out_slice)
        }))
    };
    let result = if values.len() >= DETACH_MIN_ELEMENTS { py.detach(work) } else { work() };
    let solutions = result.map_err(|_| {
        PyRuntimeError::new_err("internal error in dro_rebel's solver (a bug: please report it with the input)")
    })??;
    Ok((out, solutions))
}

fn dispatch<'py, R>(
    losses: &Bound<'py, PyAny>,
    arguments: &Arguments<'py>,
    finish: impl FnOnce(Bound<'py, PyAny>, Vec<Solution>, bool) -> PyResult<R>,
) -> PyResult<R> {
    let py = losses.py();
    let two_d = |s: &[usize]| s.len() == 2;
    if let Ok(array) = losses.cast::<PyArrayDyn<f64>>() {
        let (w, s) = solve_any(py, array, arguments)?;
        let rows = two_d(w.shape());
        finish(w.into_any(), s, rows)
    } else if let Ok(array) = losses.cast::<PyArrayDyn<f32>>() {
        let (w, s) = solve_any(py, array, arguments)?;
        let rows = two_d(w.shape());
        finish(w.into_any(), s, rows)
    } else {
        Err(NotNative::new_err("losses must be a numpy array of float64 or float32"))
    }
}

// No global state and the solves only read their inputs: safe without the GIL, so the
// module does not ask free-threaded Python to re-enable it (for builds that are not abi3).
#[pymodule(gil_used = false)]
mod _core {
    use super::*;

    #[allow(non_upper_case_globals)]
    #[pymodule_export]
    const __version__: &str = env!("CARGO_PKG_VERSION");

    #[allow(non_upper_case_globals)]
    #[pymodule_export]
    const build_profile: &str = crate::BUILD_PROFILE;

    #[pymodule_export]
    use super::NotNative;

    /// The worst-case weights only (the hot path of a training step).
    #[pyfunction]
    #[pyo3(signature = (losses, ambiguity, radius, penalty, alpha, reference, groups, tol, p, features, cost))]
    #[allow(clippy::too_many_arguments)]
    fn weights<'py>(
        losses: &Bound<'py, PyAny>,
        ambiguity: &Bound<'py, PyAny>,
        radius: Option<f64>,
        penalty: Option<f64>,
        alpha: Option<f64>,
        reference: Option<&Bound<'py, PyAny>>,
        groups: Option<&Bound<'py, PyAny>>,
        tol: Option<f64>,
        p: f64,
        features: Option<&Bound<'py, PyAny>>,
        cost: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let arguments = Arguments::new(ambiguity, radius, penalty, alpha, reference, groups, tol, p, features, cost)?;
        dispatch(losses, &arguments, |w, _, _| Ok(w))
    }

    /// Weights, value, dual variable, iterations, radius as used and (wasserstein) the plan.
    #[pyfunction]
    #[pyo3(signature = (losses, ambiguity, radius, penalty, alpha, reference, groups, tol, p, features, cost))]
    #[allow(clippy::too_many_arguments)]
    fn worst_case<'py>(
        losses: &Bound<'py, PyAny>,
        ambiguity: &Bound<'py, PyAny>,
        radius: Option<f64>,
        penalty: Option<f64>,
        alpha: Option<f64>,
        reference: Option<&Bound<'py, PyAny>>,
        groups: Option<&Bound<'py, PyAny>>,
        tol: Option<f64>,
        p: f64,
        features: Option<&Bound<'py, PyAny>>,
        cost: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let arguments = Arguments::new(ambiguity, radius, penalty, alpha, reference, groups, tol, p, features, cost)?;
        let py = losses.py();
        dispatch(losses, &arguments, |w, solutions, rows| {
            let radius = solutions.first().and_then(|s| s.radius);
            if rows {
                let value = solutions.iter().map(|s| s.value).collect::<Vec<_>>().into_pyarray(py);
                let dual = if solutions.iter().all(|s| s.dual.is_none()) {
                    py.None().into_bound(py)
                } else {
                    let duals: Vec<f64> = solutions.iter().map(|s| s.dual.unwrap_or(f64::NAN)).collect();
                    duals.into_pyarray(py).into_any()
                };
                let iterations = solutions.iter().map(|s| s.iterations as i64).collect::<Vec<_>>().into_pyarray(py);
                let plans: Vec<Bound<'py, PyAny>> =
                    solutions.iter().map(|s| plan_tuple(py, s)).collect::<PyResult<_>>()?;
                let plan = if solutions.iter().all(|s| s.plan.is_none()) {
                    py.None().into_bound(py)
                } else {
                    plans.into_pyobject(py)?.into_any()
                };
                (w, value, dual, iterations, radius, plan).into_pyobject(py)
            } else {
                let s = &solutions[0];
                let plan = plan_tuple(py, s)?;
                (w, s.value, s.dual, s.iterations, radius, plan).into_pyobject(py)
            }
        })
    }
}

/// A plan as (source, target, mass) numpy arrays, or None.
fn plan_tuple<'py>(py: Python<'py>, solution: &Solution) -> PyResult<Bound<'py, PyAny>> {
    Ok(match &solution.plan {
        None => py.None().into_bound(py),
        Some(plan) => {
            let index = |v: &[usize]| v.iter().map(|&i| i as i64).collect::<Vec<_>>();
            let source: Bound<'py, PyArray1<i64>> = index(&plan.source).into_pyarray(py);
            let target = index(&plan.target).into_pyarray(py);
            let mass = plan.mass.clone().into_pyarray(py);
            (source, target, mass).into_pyobject(py)?.into_any()
        }
    })
}
