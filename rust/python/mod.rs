//! The only code that knows Python: the module `dro_rebel._core`, its functions, the conversion
//! of their arguments (`convert.rs`), the radius argument (`radius.rs`) and the exception
//! classes of the core's errors (`errors.rs`).
//!
//! `robust_weights` and `worst_case` are plain PyO3 functions: the abi3-py310 build registers
//! them as METH_FASTCALL | METH_KEYWORDS, so a call builds no argument tuple or keyword dict.
//! Both take anything (numpy arrays of any dtype and layout, torch tensors, sequences) through
//! one conversion path; `dro_rebel.worst_case` only wraps the result in a dataclass.

mod convert;
mod errors;
mod radius;

use numpy::{Element, IntoPyArray, PyArray1, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString, PyTuple};

use crate::calibrated::{self, DEFAULT_CONFIDENCE};
use crate::{Ambiguity, Budget, CoreError, Geometry, Options, Real, Solution};
use convert::{Extras, HostLosses};
use errors::guarded;
use radius::Radius;

/// The set named `name`. Names written in Python source are interned, so comparing the object
/// with the interned names usually settles it; other strings are decoded.
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

/// The interned name of a set.
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

/// One call's arguments besides the losses, as Python passed them (None where it left one out).
struct Request<'a, 'py> {
    ambiguity: Ambiguity,
    radius: Option<&'a Bound<'py, PyAny>>,
    penalty: Option<f64>,
    alpha: Option<f64>,
    reference: Option<&'a Bound<'py, PyAny>>,
    groups: Option<&'a Bound<'py, PyAny>>,
    tol: Option<f64>,
    p: f64,
    features: Option<&'a Bound<'py, PyAny>>,
    cost: Option<&'a Bound<'py, PyAny>>,
    confidence: Option<&'a Bound<'py, PyAny>>,
}

/// The weights of `losses` in the caller's type, one solution per row, and whether the losses
/// were 2-D.
fn solve<'py>(
    losses: &Bound<'py, PyAny>,
    request: &Request<'_, 'py>,
) -> PyResult<(Bound<'py, PyAny>, Vec<Solution>, bool)> {
    let ambiguity = request.ambiguity;
    let radius = radius::requested(
        request.radius,
        request.confidence,
        Some(ambiguity.name()),
        || Ok(format!("'{}'", ambiguity.name())),
        request.penalty.is_some(),
    )?;
    let (host, restore) = convert::losses(losses)?;
    let shape = host.shape();
    let rows_2d = shape.len() == 2;
    let columns = shape[shape.len() - 1];
    let extras = match (request.reference, request.groups, request.features, request.cost) {
        (None, None, None, None) => Extras::default(),
        (reference, groups, features, cost) => Extras::new(shape, reference, groups, features, cost)?,
    };
    let groups = extras.groups.as_ref().map(|g| g.as_slice()).transpose()?;
    let radius = radius::resolved(radius, || calibrated::problem_size(columns, groups))?;
    let budget = Budget::new(ambiguity, radius, request.penalty, request.alpha)?;
    if ambiguity == Ambiguity::Wasserstein && !(request.p >= 1.0 && request.p.is_finite()) {
        return Err(CoreError::Geometry(format!("p must be a finite number >= 1, got {}", request.p)).into());
    }
    let options = options(ambiguity, budget, request, &extras)?;
    let (weights, solutions) = match &host {
        HostLosses::F64(array) => {
            let (weights, solutions) = solve_rows(array, &options)?;
            (weights.into_any(), solutions)
        }
        HostLosses::F32(array) => {
            let (weights, solutions) = solve_rows(array, &options)?;
            (weights.into_any(), solutions)
        }
    };
    Ok((restore.apply(weights)?, solutions, rows_2d))
}

fn options<'a>(ambiguity: Ambiguity, budget: Budget, request: &Request, extras: &'a Extras) -> PyResult<Options<'a>> {
    let geometry = match (&extras.features, &extras.cost) {
        (Some(_), Some(_)) => {
            return Err(CoreError::Geometry("give one of features= and cost=, not both".into()).into())
        }
        (Some(f), None) => Some(Geometry::Features { data: f.as_slice()?, dim: f.shape()[1] }),
        (None, Some(c)) => Some(Geometry::Cost(c.as_slice()?)),
        (None, None) => None,
    };
    if geometry.is_some() && ambiguity != Ambiguity::Wasserstein {
        return Err(CoreError::Geometry("features= and cost= are for the wasserstein set only".into()).into());
    }
    Ok(Options {
        ambiguity,
        budget,
        reference: extras.reference.as_ref().map(|r| r.as_slice()).transpose()?,
        groups: extras.groups.as_ref().map(|g| g.as_slice()).transpose()?,
        tol: request.tol.unwrap_or(crate::DEFAULT_TOL),
        geometry,
        order: request.p,
    })
}

/// The weights of every row (same shape and dtype as the losses), and one solution per row.
fn solve_rows<'py, T: Real + Element>(
    losses: &Bound<'py, PyArrayDyn<T>>,
    options: &Options,
) -> PyResult<(Bound<'py, PyArrayDyn<T>>, Vec<Solution>)> {
    let py = losses.py();
    let shape = losses.shape();
    let columns = shape[shape.len() - 1];
    debug_assert!(losses.is_c_contiguous());
    // SAFETY: C-contiguous (`HostLosses` holds no other kind), so the slice covers the array's
    // len() elements exactly; nothing in this module writes to the losses or holds a mutable
    // view of them, and the GIL is held or the array kept alive (`losses` is borrowed for the
    // whole solve). A readonly borrow (rust-numpy's tracking through its global table of
    // borrows) would guard against no more than that, and cost a noticeable share of a small
    // call.
    let values = unsafe { losses.as_slice() }.map_err(|e| CoreError::Shape(format!("losses: {e}")))?;
    // SAFETY: a fresh array of the same shape, C order (`false`); its elements are
    // uninitialised, and the solver writes every one of them (`solve_rows` fills each row)
    // before Python can see it (on error the array is dropped unread).
    let out = unsafe { PyArrayDyn::<T>::new(py, shape, false) };
    debug_assert!(out.is_c_contiguous() && out.len() == values.len());
    // SAFETY: the fresh array is C-contiguous with values.len() elements, and no one else has
    // seen it yet: this is the only view of it until the solve returns.
    let out_slice = unsafe { out.as_slice_mut() }.expect("a fresh array is contiguous");
    let mut work = move || crate::solve_rows(values, columns, options, out_slice);
    let solutions = if values.len() >= DETACH_MIN_ELEMENTS { py.detach(work) } else { work() }?;
    Ok((out, solutions))
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

/// (weights, value, dual, iterations, radius as used, plan) of `worst_case`.
fn solution_tuple<'py>(
    py: Python<'py>,
    weights: Bound<'py, PyAny>,
    solutions: &[Solution],
    rows_2d: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    let radius = solutions.first().and_then(|s| s.radius);
    if !rows_2d {
        let s = &solutions[0];
        return (weights, s.value, s.dual, s.iterations, radius, plan_tuple(py, s)?).into_pyobject(py);
    }
    let value = solutions.iter().map(|s| s.value).collect::<Vec<_>>().into_pyarray(py);
    let dual = if solutions.iter().all(|s| s.dual.is_none()) {
        py.None().into_bound(py)
    } else {
        let duals: Vec<f64> = solutions.iter().map(|s| s.dual.unwrap_or(f64::NAN)).collect();
        duals.into_pyarray(py).into_any()
    };
    let iterations = solutions.iter().map(|s| s.iterations as i64).collect::<Vec<_>>().into_pyarray(py);
    let plan = if solutions.iter().all(|s| s.plan.is_none()) {
        py.None().into_bound(py)
    } else {
        let plans: Vec<Bound<'py, PyAny>> = solutions.iter().map(|s| plan_tuple(py, s)).collect::<PyResult<_>>()?;
        plans.into_pyobject(py)?.into_any()
    };
    (weights, value, dual, iterations, radius, plan).into_pyobject(py)
}

/// Worst-case weights q* of the samples, in the type, dtype and device of ``losses``.
///
/// Args:
///     losses: per-sample losses, shape (n,) for one problem or (m, n) for m problems (one
///         per row). numpy array, torch tensor (any device; it is detached), or a sequence.
///     ambiguity: ``"kl"``, ``"chi2"``, ``"cvar"``, ``"tv"`` or ``"wasserstein"``.
///     radius: size of the ambiguity set (constrained form). rho = 0 gives q = reference.
///         ``"calibrated"`` (``chi2`` and ``kl``): rho = q / (2n), q the (2 * confidence - 1)
///         quantile of the chi-square distribution with one degree of freedom and n the number
///         of samples (of groups with ``groups=``), so that V* is an asymptotically exact
///         upper confidence bound on the mean loss (docs/method.md#calibrated-radius).
///     penalty: a fixed dual variable instead of a radius (penalised form: temperature tau
///         for ``kl``, lam for ``chi2`` and ``wasserstein``).
///     alpha: the CVaR level in (0, 1] (``cvar`` only): q_i <= p_i / alpha.
///     reference: the nominal distribution p (non-negative, normalised to sum 1); uniform by
///         default. Shape (n,) shared by all rows, or the shape of ``losses``.
///     groups: integer group labels, shape (n,) or the shape of ``losses``: the set then
///         applies to the mixture over groups (docs/method.md#groups).
///     tol: tolerance of the iterative solves (default 1e-12, relative).
///     p: the Wasserstein type (cost d_ij ** p), p >= 1.
///     features: ``wasserstein``: (n, d) features; the cost is their Euclidean distance.
///     cost: ``wasserstein``: an (n, n) matrix of distances d_ij.
///     confidence: the level of ``radius="calibrated"``, in (0.5, 1); 0.95 by default.
///
/// Returns:
///     q*, same shape as ``losses``: float32 for float32 numpy input, float64 otherwise; for a
///     torch tensor, a tensor of the same dtype on the same device.
///
/// Raises:
///     DroRebelError: a subclass of ValueError for each kind of bad input: LossesError (NaN,
///         inf, empty, not real numbers), ShapeError (not 1-D or 2-D, shapes that do not fit),
///         BudgetError (a negative or NaN radius, a non-positive penalty, alpha outside (0, 1],
///         a ``confidence`` outside (0.5, 1) or without ``radius="calibrated"``),
///         ReferenceDistributionError, GroupsError, AmbiguityError (an unknown set) and
///         GeometryError (Wasserstein features, cost or p).
///     TypeError: an argument of the wrong type.
#[pyfunction]
#[pyo3(
    signature = (losses, ambiguity = Ambiguity::Chi2, *, radius = None, penalty = None, alpha = None, reference = None,
                 groups = None, tol = None, p = 1.0, features = None, cost = None, confidence = None),
    text_signature = "(losses, ambiguity='chi2', *, radius=None, penalty=None, alpha=None, reference=None, groups=None, tol=None, p=1.0, features=None, cost=None, confidence=None)"
)]
#[allow(clippy::too_many_arguments)]
fn robust_weights<'py>(
    losses: &Bound<'py, PyAny>,
    #[pyo3(from_py_with = ambiguity_named)] ambiguity: Ambiguity,
    radius: Option<&Bound<'py, PyAny>>,
    penalty: Option<f64>,
    alpha: Option<f64>,
    reference: Option<&Bound<'py, PyAny>>,
    groups: Option<&Bound<'py, PyAny>>,
    tol: Option<f64>,
    p: f64,
    features: Option<&Bound<'py, PyAny>>,
    cost: Option<&Bound<'py, PyAny>>,
    confidence: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    guarded(|| {
        let request =
            Request { ambiguity, radius, penalty, alpha, reference, groups, tol, p, features, cost, confidence };
        Ok(solve(losses, &request)?.0)
    })
}

/// The arguments of ``robust_weights``; returns (weights, value, dual, iterations, radius as
/// used, plan). For 1-D losses value is a float, dual a float or None, iterations an int and
/// plan a (source, target, mass) tuple or None; for 2-D losses value, dual and iterations are
/// arrays with one entry per row (dual None when no set has one) and plan a list of per-row
/// plans or None. ``dro_rebel.worst_case`` wraps it in a ``WorstCase``.
#[pyfunction]
#[pyo3(
    signature = (losses, ambiguity = Ambiguity::Chi2, *, radius = None, penalty = None, alpha = None, reference = None,
                 groups = None, tol = None, p = 1.0, features = None, cost = None, confidence = None),
    text_signature = "(losses, ambiguity='chi2', *, radius=None, penalty=None, alpha=None, reference=None, groups=None, tol=None, p=1.0, features=None, cost=None, confidence=None)"
)]
#[allow(clippy::too_many_arguments)]
fn worst_case<'py>(
    losses: &Bound<'py, PyAny>,
    #[pyo3(from_py_with = ambiguity_named)] ambiguity: Ambiguity,
    radius: Option<&Bound<'py, PyAny>>,
    penalty: Option<f64>,
    alpha: Option<f64>,
    reference: Option<&Bound<'py, PyAny>>,
    groups: Option<&Bound<'py, PyAny>>,
    tol: Option<f64>,
    p: f64,
    features: Option<&Bound<'py, PyAny>>,
    cost: Option<&Bound<'py, PyAny>>,
    confidence: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    guarded(|| {
        let request =
            Request { ambiguity, radius, penalty, alpha, reference, groups, tol, p, features, cost, confidence };
        let (weights, solutions, rows_2d) = solve(losses, &request)?;
        solution_tuple(losses.py(), weights, &solutions, rows_2d)
    })
}

/// The radius rho = q / (2n) of ``radius="calibrated"``: q is the (2 * confidence - 1)
/// quantile of the chi-square distribution with one degree of freedom, n the number of
/// samples (or groups) in the problem.
///
/// With it, the worst-case value V* of the ``"chi2"`` or ``"kl"`` ball is an asymptotically
/// exact one-sided upper confidence bound, at ``confidence``, for the mean loss
/// (docs/method.md#calibrated-radius). For confidence 0.95, q = 2.706 and rho = 1.353 / n.
#[pyfunction]
#[pyo3(signature = (n, confidence = None), text_signature = "(n, confidence=0.95)")]
fn calibrated_radius(n: &Bound<'_, PyAny>, confidence: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
    guarded(|| {
        let confidence = confidence.map(radius::checked_confidence).transpose()?.unwrap_or(DEFAULT_CONFIDENCE);
        let count = match n.is_instance_of::<PyBool>() {
            true => None,
            false => n.extract::<i64>().ok().filter(|&n| n >= 1),
        };
        let Some(count) = count else {
            return Err(CoreError::Budget(format!(
                "n must be a positive integer (the number of samples or groups), got {}",
                n.repr()?
            ))
            .into());
        };
        Ok(calibrated::calibrated_radius(count as usize, confidence))
    })
}

/// The radius a call of ``robust_weights`` would solve with (None without one), after the same
/// checks: for ``radius="calibrated"`` the number for ``losses`` and ``groups`` (None when
/// ``losses`` is None: the arguments are only checked). ``ambiguity`` may be any value.
#[pyfunction]
#[pyo3(signature = (radius, confidence, ambiguity, penalty, losses = None, groups = None))]
fn resolve_radius(
    radius: Option<&Bound<'_, PyAny>>,
    confidence: Option<&Bound<'_, PyAny>>,
    ambiguity: &Bound<'_, PyAny>,
    penalty: Option<&Bound<'_, PyAny>>,
    losses: Option<&Bound<'_, PyAny>>,
    groups: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<f64>> {
    guarded(|| {
        let name = ambiguity.cast::<PyString>().ok().map(|name| name.to_cow()).transpose()?;
        let ambiguity_repr = || Ok(ambiguity.repr()?.to_string());
        let requested = radius::requested(radius, confidence, name.as_deref(), ambiguity_repr, penalty.is_some())?;
        let Some(losses) = losses.filter(|_| matches!(requested, Some(Radius::Calibrated(_)))) else {
            return radius::resolved(requested.filter(|r| matches!(r, Radius::Number(_))), || Ok(0));
        };
        let (host, _) = convert::losses(losses)?;
        let shape = host.shape();
        let extras = Extras::new(shape, None, groups, None, None)?;
        let labels = extras.groups.as_ref().map(|g| g.as_slice()).transpose()?;
        radius::resolved(requested, || calibrated::problem_size(shape[shape.len() - 1], labels))
    })
}

/// The build of the kernels this process runs: ``"avx2"`` (AVX2 and FMA) or ``"portable"``;
/// ``DRO_REBEL_PORTABLE=1`` in the environment forces the portable one.
#[pyfunction]
fn kernels() -> &'static str {
    crate::kernels()
}

// No global state and the solves only read their inputs: safe without the GIL, so the
// module does not ask free-threaded Python to re-enable it (for builds that are not abi3).
#[pymodule(gil_used = false)]
mod _core {
    #[pymodule_export]
    use super::errors::{
        AmbiguityError, BudgetError, DroRebelError, GeometryError, GroupsError, InternalError, LossesError,
        ReferenceDistributionError, ShapeError,
    };
    #[pymodule_export]
    use super::{calibrated_radius, kernels, resolve_radius, robust_weights, worst_case};

    #[allow(non_upper_case_globals)]
    #[pymodule_export]
    const __version__: &str = env!("CARGO_PKG_VERSION");

    #[allow(non_upper_case_globals)]
    #[pymodule_export]
    const build_profile: &str = crate::BUILD_PROFILE;
}
