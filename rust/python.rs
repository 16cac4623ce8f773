//! The only module that knows Python: argument conversion, dtype dispatch, releasing the GIL
//! for large solves, and mapping the core's errors to `ValueError`.
//!
//! `robust_weights` is the public entry point itself, so that the hot path of a training loop
//! (a contiguous float64/float32 numpy array and no extras) runs no Python frame; it is called
//! as METH_FASTCALL (`python/fastcall.rs`). Everything else it hands to `dro_rebel._api`, which
//! converts the input and calls `worst_case`; that takes contiguous float64/float32 arrays only.

use numpy::{
    Element, IntoPyArray, PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use std::ffi::CStr;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyTuple};

use crate::{Ambiguity, Budget, CoreError, Geometry, Options, Real, Solution};

mod fastcall;

use fastcall::{MethodDef, Signature};

impl From<CoreError> for PyErr {
    fn from(error: CoreError) -> PyErr {
        PyValueError::new_err(error.to_string())
    }
}

/// Python's repr of a shape: (2, 3), (5,), ().
fn shape_repr(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

/// The set named `name`. Names written in Python source are interned, so comparing the object
/// with the interned names usually settles it; other strings are decoded, which the abi3 API
/// of Python 3.9 does by way of a new bytes object.
fn ambiguity_named(name: &Bound<'_, PyAny>) -> PyResult<Ambiguity> {
    if let Some(ambiguity) = AMBIGUITIES.into_iter().find(|&a| name.is(ambiguity_name(name.py(), a))) {
        return Ok(ambiguity);
    }
    let name = name.cast::<PyString>().map_err(|_| {
        let type_name = name.get_type().name().map_or_else(|_| "?".into(), |n| n.to_string());
        PyTypeError::new_err(format!("ambiguity must be a str such as \"kl\", got {type_name}"))
    })?;
    Ok(name.to_cow()?.parse()?)
}

const AMBIGUITIES: [Ambiguity; 5] =
    [Ambiguity::Kl, Ambiguity::Chi2, Ambiguity::Cvar, Ambiguity::Tv, Ambiguity::Wasserstein];

/// The interned name of a set (also how it is handed back to Python).
fn ambiguity_name(py: Python<'_>, ambiguity: Ambiguity) -> &Bound<'_, PyString> {
    match ambiguity {
        Ambiguity::Kl => intern!(py, "kl"),
        Ambiguity::Chi2 => intern!(py, "chi2"),
        Ambiguity::Cvar => intern!(py, "cvar"),
        Ambiguity::Tv => intern!(py, "tv"),
        Ambiguity::Wasserstein => intern!(py, "wasserstein"),
    }
}

/// Above this many losses the solve runs with the GIL released; below, releasing costs more
/// than it frees.
const DETACH_MIN_ELEMENTS: usize = 4096;

/// What a call passed besides the losses, as Python passed it (None where it left one out).
struct Given<'a, 'py> {
    ambiguity: Ambiguity,
    radius: Option<f64>,
    penalty: Option<f64>,
    alpha: Option<f64>,
    reference: Option<&'a Bound<'py, PyAny>>,
    groups: Option<&'a Bound<'py, PyAny>>,
    tol: Option<f64>,
    p: f64,
    features: Option<&'a Bound<'py, PyAny>>,
    cost: Option<&'a Bound<'py, PyAny>>,
}

impl Given<'_, '_> {
    /// Whether anything but the set and its size was given: a reference, groups or geometry.
    fn has_extras(&self) -> bool {
        self.reference.is_some() || self.groups.is_some() || self.features.is_some() || self.cost.is_some()
    }
}

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
    fn new(given: &Given<'_, 'py>) -> PyResult<Self> {
        let Given { ambiguity, radius, penalty, alpha, tol, p: order, .. } = *given;
        let budget = Budget::new(ambiguity, radius, penalty, alpha)?;
        if ambiguity == Ambiguity::Wasserstein && !(order >= 1.0 && order.is_finite()) {
            return Err(PyValueError::new_err(format!("p must be a finite number >= 1, got {order}")));
        }
        Ok(Arguments {
            ambiguity,
            budget,
            tol: tol.unwrap_or(crate::DEFAULT_TOL),
            order,
            reference: given.reference.map(|r| readonly::<f64>(r, "reference")).transpose()?,
            groups: given.groups.map(|g| readonly::<i64>(g, "groups")).transpose()?,
            features: given.features.map(|f| readonly::<f64>(f, "features")).transpose()?,
            cost: given.cost.map(|c| readonly::<f64>(c, "cost")).transpose()?,
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

/// Losses the core takes as they are: a numpy array (not a subclass) of float64 or float32,
/// C-contiguous. Anything else `dro_rebel._api` converts first.
enum NativeLosses<'py> {
    F64(Bound<'py, PyArrayDyn<f64>>),
    F32(Bound<'py, PyArrayDyn<f32>>),
}

impl<'py> NativeLosses<'py> {
    fn of(losses: &Bound<'py, PyAny>) -> Option<Self> {
        // SAFETY: `losses` is a live object and we hold the GIL.
        if unsafe { numpy::npyffi::PyArray_CheckExact(losses.py(), losses.as_ptr()) } == 0 {
            return None;
        }
        // SAFETY: an ndarray, checked just above.
        if !unsafe { losses.cast_unchecked::<PyUntypedArray>() }.is_c_contiguous() {
            return None;
        }
        if let Ok(array) = losses.cast::<PyArrayDyn<f64>>() {
            Some(NativeLosses::F64(array.clone()))
        } else {
            losses.cast::<PyArrayDyn<f32>>().ok().map(|array| NativeLosses::F32(array.clone()))
        }
    }

    /// For the entry points that take converted input only.
    fn required(losses: &Bound<'py, PyAny>) -> PyResult<Self> {
        Self::of(losses).ok_or_else(|| {
            PyTypeError::new_err(
                "losses must be a C-contiguous numpy array of float64 or float32 (dro_rebel.robust_weights \
                 converts anything else)",
            )
        })
    }

    /// The weights (same shape and dtype), and one solution per row.
    fn solve(&self, arguments: &Arguments<'py>) -> PyResult<(Bound<'py, PyAny>, Vec<Solution>)> {
        Ok(match self {
            NativeLosses::F64(array) => {
                let (weights, solutions) = solve_rows(array, arguments)?;
                (weights.into_any(), solutions)
            }
            NativeLosses::F32(array) => {
                let (weights, solutions) = solve_rows(array, arguments)?;
                (weights.into_any(), solutions)
            }
        })
    }
}

/// The weights of every row, and one solution per row.
fn solve_rows<'py, T: Real + Element>(
    losses: &Bound<'py, PyArrayDyn<T>>,
    arguments: &Arguments<'py>,
) -> PyResult<(Bound<'py, PyArrayDyn<T>>, Vec<Solution>)> {
    let py = losses.py();
    let shape = losses.shape();
    if shape.is_empty() || shape.len() > 2 {
        return Err(PyValueError::new_err(format!(
            "losses must be 1-D (one problem) or 2-D (one problem per row), got shape {}",
            shape_repr(shape)
        )));
    }
    let columns = *shape.last().unwrap_or(&0);
    // SAFETY: C-contiguous (checked in `NativeLosses::of`), and nothing in this module writes to
    // the losses or holds a mutable view of them. A readonly borrow (rust-numpy's tracking
    // through its global table of borrows) would guard against no more than that, and cost a
    // noticeable share of a small call.
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

    #[pymodule_init]
    fn init(module: &Bound<'_, PyModule>) -> PyResult<()> {
        ROBUST_WEIGHTS.add_to(module)
    }

    /// Weights, value, dual variable, iterations, radius as used and (wasserstein) the plan, of
    /// converted input.
    #[pyfunction]
    #[pyo3(signature = (losses, ambiguity, radius, penalty, alpha, reference, groups, tol, p, features, cost))]
    #[allow(clippy::too_many_arguments)]
    fn worst_case<'py>(
        losses: &Bound<'py, PyAny>,
        #[pyo3(from_py_with = ambiguity_named)] ambiguity: Ambiguity,
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
        let given = Given { ambiguity, radius, penalty, alpha, reference, groups, tol, p, features, cost };
        let arguments = Arguments::new(&given)?;
        let py = losses.py();
        let (w, solutions) = NativeLosses::required(losses)?.solve(&arguments)?;
        let radius = solutions.first().and_then(|s| s.radius);
        if w.cast::<PyUntypedArray>()?.ndim() == 2 {
            let value = solutions.iter().map(|s| s.value).collect::<Vec<_>>().into_pyarray(py);
            let dual = if solutions.iter().all(|s| s.dual.is_none()) {
                py.None().into_bound(py)
            } else {
                let duals: Vec<f64> = solutions.iter().map(|s| s.dual.unwrap_or(f64::NAN)).collect();
                duals.into_pyarray(py).into_any()
            };
            let iterations = solutions.iter().map(|s| s.iterations as i64).collect::<Vec<_>>().into_pyarray(py);
            let plans: Vec<Bound<'py, PyAny>> = solutions.iter().map(|s| plan_tuple(py, s)).collect::<PyResult<_>>()?;
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
    }
}

/// `robust_weights`, registered by hand as a METH_FASTCALL function: `fastcall.rs` says why.
static ROBUST_WEIGHTS: MethodDef = MethodDef::new(c"robust_weights", robust_weights_fastcall, ROBUST_WEIGHTS_DOC);

static ROBUST_WEIGHTS_SIGNATURE: Signature<12> = Signature {
    function: "robust_weights",
    parameters: [
        "losses",
        "ambiguity",
        "radius",
        "penalty",
        "alpha",
        "reference",
        "groups",
        "tol",
        "p",
        "features",
        "cost",
        "confidence",
    ],
    positional: 2,
    required: 1,
    interned: PyOnceLock::new(),
};

/// The signature line (for `inspect`) and the docstring.
const ROBUST_WEIGHTS_DOC: &CStr = cr#"robust_weights(losses, ambiguity='chi2', *, radius=None, penalty=None, alpha=None, reference=None, groups=None, tol=None, p=1.0, features=None, cost=None, confidence=None)
--

Worst-case weights q* of the samples, in the type, dtype and device of ``losses``.

Args:
    losses: per-sample losses, shape (n,) for one problem or (m, n) for m problems (one
        per row). numpy array, torch tensor (any device; it is detached), or a sequence.
    ambiguity: ``"kl"``, ``"chi2"``, ``"cvar"``, ``"tv"`` or ``"wasserstein"``.
    radius: size of the ambiguity set (constrained form). rho = 0 gives q = reference.
        ``"calibrated"`` (``chi2`` and ``kl``): rho = q / (2n), q the (2 * confidence - 1)
        quantile of the chi-square distribution with one degree of freedom and n the number
        of samples (of groups with ``groups=``), so that V* is an asymptotically exact
        upper confidence bound on the mean loss (docs/method.md#calibrated-radius).
    penalty: a fixed dual variable instead of a radius (penalised form: temperature tau
        for ``kl``, lam for ``chi2`` and ``wasserstein``).
    alpha: the CVaR level in (0, 1] (``cvar`` only): q_i <= p_i / alpha.
    reference: the nominal distribution p (non-negative, normalised to sum 1); uniform by
        default. Shape (n,) shared by all rows, or the shape of ``losses``.
    groups: integer group labels, shape (n,) or the shape of ``losses``: the set then
        applies to the mixture over groups (docs/method.md#groups).
    tol: tolerance of the iterative solves (default 1e-12, relative).
    p: the Wasserstein type (cost d_ij ** p), p >= 1.
    features: ``wasserstein``: (n, d) features; the cost is their Euclidean distance.
    cost: ``wasserstein``: an (n, n) matrix of distances d_ij.
    confidence: the level of ``radius="calibrated"``, in (0.5, 1); 0.95 by default.

Returns:
    q*, same shape as ``losses``: float32 for float32 numpy input, float64 otherwise; for a
    torch tensor, a tensor of the same dtype on the same device.

Raises:
    ValueError: NaN or inf losses, a negative or NaN radius, a non-positive penalty, a bad
        reference or group labels, an empty batch, a wrong shape, an unknown set, a
        ``confidence`` outside (0.5, 1) or without ``radius="calibrated"``."#;

unsafe extern "C" fn robust_weights_fastcall(
    _module: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython's call of a METH_FASTCALL | METH_KEYWORDS function, with the GIL held;
    // the borrowed arguments do not outlive it.
    unsafe {
        fastcall::trampoline(|py| {
            let [losses, ambiguity, radius, penalty, alpha, reference, groups, tol, p, features, cost, confidence] =
                ROBUST_WEIGHTS_SIGNATURE.bind(py, args, nargs, kwnames)?;
            let ambiguity = ambiguity.map(|name| ambiguity_named(&name)).transpose()?;
            let losses = losses.expect("bind checks that losses is given");
            let radius_named = fastcall::optional(radius).is_some_and(|r| r.is_instance_of::<PyString>());
            if radius_named || fastcall::optional(confidence).is_some() {
                // A radius that depends on the problem's size: resolved where the input is
                // converted, which also counts the groups.
                let ambiguity = ambiguity_name(py, ambiguity.unwrap_or(Ambiguity::Chi2));
                let [radius, penalty, alpha, reference, groups, tol, p, features, cost, confidence] =
                    [radius, penalty, alpha, reference, groups, tol, p, features, cost, confidence]
                        .map(|value| value.map_or_else(|| py.None().into_bound(py), |v| v.to_owned()));
                let p = if p.is_none() { 1.0_f64.into_pyobject(py)?.into_any() } else { p };
                return convert_and_solve(py)?.call1((
                    &*losses, ambiguity, radius, penalty, alpha, reference, groups, tol, p, features, cost, confidence,
                ));
            }
            let (reference, groups) = (fastcall::optional(reference), fastcall::optional(groups));
            let (features, cost) = (fastcall::optional(features), fastcall::optional(cost));
            let given = Given {
                ambiguity: ambiguity.unwrap_or(Ambiguity::Chi2),
                radius: fastcall::optional_float(radius, "radius")?,
                penalty: fastcall::optional_float(penalty, "penalty")?,
                alpha: fastcall::optional_float(alpha, "alpha")?,
                reference: reference.as_deref(),
                groups: groups.as_deref(),
                tol: fastcall::optional_float(tol, "tol")?,
                p: p.map(|p| fastcall::float(p, "p")).transpose()?.unwrap_or(1.0),
                features: features.as_deref(),
                cost: cost.as_deref(),
            };
            robust_weights(&losses, &given)
        })
    }
}

/// The weights of `losses`: solved here for a contiguous float64/float32 ndarray without
/// extras, else by `dro_rebel._api._convert_and_solve`.
fn robust_weights<'py>(losses: &Bound<'py, PyAny>, given: &Given<'_, 'py>) -> PyResult<Bound<'py, PyAny>> {
    if !given.has_extras() {
        if let Some(native) = NativeLosses::of(losses) {
            return Ok(native.solve(&Arguments::new(given)?)?.0);
        }
    }
    let py = losses.py();
    let Given { ambiguity, radius, penalty, alpha, reference, groups, tol, p, features, cost } = *given;
    let name = ambiguity_name(py, ambiguity);
    convert_and_solve(py)?.call1((
        losses,
        name,
        radius,
        penalty,
        alpha,
        reference,
        groups,
        tol,
        p,
        features,
        cost,
        None::<f64>,
    ))
}

/// `dro_rebel._api._convert_and_solve`, looked up once.
fn convert_and_solve(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static CONVERT_AND_SOLVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    CONVERT_AND_SOLVE.import(py, "dro_rebel._api", "_convert_and_solve")
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
