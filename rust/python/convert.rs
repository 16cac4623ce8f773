//! The one conversion path from what a caller passes to what the core reads, and back.
//!
//! Losses: a numpy array of any dtype and layout, a torch tensor (any device, dtype and layout;
//! it is detached) or a sequence become a C-contiguous float64 or float32 host array; the
//! weights go back as the caller's type (a tensor on its device, of its dtype). A contiguous
//! float64/float32 ndarray, or a CPU float64/float32 tensor, is read in place: no copy. The
//! reference, group labels, features and cost become contiguous float64 (int64 for labels)
//! arrays of a shape that fits the losses. Nothing here writes to the caller's data.

use numpy::{
    dtype, Element, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

use crate::CoreError;

/// Losses the core reads as they are: an exact ndarray, C-contiguous, float64 or float32.
pub(super) enum HostLosses<'py> {
    F64(Bound<'py, PyArrayDyn<f64>>),
    F32(Bound<'py, PyArrayDyn<f32>>),
}

impl<'py> HostLosses<'py> {
    /// `losses` itself when the core can read it in place.
    fn of(losses: &Bound<'py, PyAny>) -> Option<Self> {
        // SAFETY: `losses` is a live object and the GIL is held (`Bound`).
        if unsafe { numpy::npyffi::PyArray_CheckExact(losses.py(), losses.as_ptr()) } == 0 {
            return None;
        }
        // SAFETY: an ndarray, checked just above.
        if !unsafe { losses.cast_unchecked::<PyUntypedArray>() }.is_c_contiguous() {
            return None;
        }
        if let Ok(array) = losses.cast::<PyArrayDyn<f64>>() {
            Some(HostLosses::F64(array.clone()))
        } else {
            losses.cast::<PyArrayDyn<f32>>().ok().map(|array| HostLosses::F32(array.clone()))
        }
    }

    pub(super) fn shape(&self) -> &[usize] {
        match self {
            HostLosses::F64(array) => array.shape(),
            HostLosses::F32(array) => array.shape(),
        }
    }
}

/// How the weights go back to the caller.
pub(super) enum Restore<'py> {
    /// As the numpy array the core wrote.
    Array,
    /// As a CPU tensor sharing the array's memory (`torch.from_numpy`).
    Tensor,
    /// As a tensor on the caller's device, of its dtype.
    TensorOn { device: Bound<'py, PyAny>, dtype: Bound<'py, PyAny> },
}

impl<'py> Restore<'py> {
    pub(super) fn apply(&self, weights: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = weights.py();
        match self {
            Restore::Array => Ok(weights),
            Restore::Tensor => torch(py)?.from_numpy.bind(py).call1((weights,)),
            Restore::TensorOn { device, dtype } => {
                let tensor = torch(py)?.from_numpy.bind(py).call1((weights,))?;
                let to = PyDict::new(py);
                to.set_item("device", device)?;
                to.set_item("dtype", dtype)?;
                tensor.call_method("to", (), Some(&to))
            }
        }
    }
}

/// The losses as the core reads them, and how to hand the weights back.
pub(super) fn losses<'py>(losses: &Bound<'py, PyAny>) -> PyResult<(HostLosses<'py>, Restore<'py>)> {
    let (host, restore) = match HostLosses::of(losses) {
        Some(host) => (host, Restore::Array),
        None if is_torch_tensor(losses)? => from_tensor(losses)?,
        None => (losses_array(losses)?, Restore::Array),
    };
    check_dimensions(host.shape())?;
    Ok((host, restore))
}

fn check_dimensions(shape: &[usize]) -> PyResult<()> {
    if shape.is_empty() || shape.len() > 2 {
        return Err(CoreError::Shape(format!(
            "losses must be 1-D (one problem) or 2-D (one problem per row), got shape {}",
            shape_repr(shape)
        ))
        .into());
    }
    Ok(())
}

/// Any array-like of real numbers as host losses: float32 stays float32, the rest is float64.
fn losses_array<'py>(values: &Bound<'py, PyAny>) -> PyResult<HostLosses<'py>> {
    let array = real_array(values, "losses", CoreError::Losses)?;
    // Before the copy: `ascontiguousarray` makes a 0-d array 1-d.
    check_dimensions(array.shape())?;
    let py = values.py();
    Ok(if array.dtype().is_equiv_to(&dtype::<f32>(py)) {
        HostLosses::F32(contiguous_copy::<f32>(&array)?)
    } else {
        HostLosses::F64(contiguous_copy::<f64>(&array)?)
    })
}

/// A tensor's losses: read in place for a CPU strided float64/float32 tensor, else copied to the
/// host (half precision widened to float32) and restored to the caller's device and dtype.
fn from_tensor<'py>(tensor: &Bound<'py, PyAny>) -> PyResult<(HostLosses<'py>, Restore<'py>)> {
    let py = tensor.py();
    let torch = torch(py)?;
    let dtype = tensor.getattr(intern!(py, "dtype"))?;
    let in_place = tensor.getattr(intern!(py, "is_cpu"))?.is_truthy()?
        && tensor.getattr(intern!(py, "layout"))?.is(torch.strided.bind(py))
        && (dtype.is(torch.float64.bind(py)) || dtype.is(torch.float32.bind(py)));
    if in_place {
        let tensor = if tensor.getattr(intern!(py, "requires_grad"))?.is_truthy()? {
            tensor.call_method0(intern!(py, "detach"))?
        } else {
            tensor.clone()
        };
        let array = tensor.call_method0(intern!(py, "numpy"))?;
        let host = match HostLosses::of(&array) {
            Some(host) => host,
            None => losses_array(&array)?,
        };
        return Ok((host, Restore::Tensor));
    }
    let device = tensor.getattr(intern!(py, "device"))?;
    let host = losses_array(&tensor_to_numpy(tensor, "losses", CoreError::Losses)?)?;
    let dtype = if dtype.getattr(intern!(py, "is_floating_point"))?.is_truthy()? {
        dtype
    } else {
        torch.float64.bind(py).clone()
    };
    Ok((host, Restore::TensorOn { device, dtype }))
}

/// The reference, group labels and Wasserstein geometry of a call, converted and checked
/// against the shape of the losses.
#[derive(Default)]
pub(super) struct Extras<'py> {
    pub reference: Option<PyReadonlyArrayDyn<'py, f64>>,
    pub groups: Option<PyReadonlyArrayDyn<'py, i64>>,
    pub features: Option<PyReadonlyArrayDyn<'py, f64>>,
    pub cost: Option<PyReadonlyArrayDyn<'py, f64>>,
}

impl<'py> Extras<'py> {
    pub(super) fn new(
        shape: &[usize],
        reference: Option<&Bound<'py, PyAny>>,
        groups: Option<&Bound<'py, PyAny>>,
        features: Option<&Bound<'py, PyAny>>,
        cost: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Self> {
        let n = *shape.last().unwrap_or(&0);
        let fits = |got: &[usize]| got == &shape[shape.len() - 1..] || got == shape;
        let reference = reference
            .map(|value| {
                let array = float64(value, "reference", CoreError::Reference)?;
                if !fits(array.shape()) {
                    return Err(CoreError::Reference(format!(
                        "reference must have shape {} to match the losses, got {}",
                        fitting_shapes(shape),
                        shape_repr(array.shape())
                    ))
                    .into());
                }
                readonly(&array, "reference")
            })
            .transpose()?;
        let groups = groups.map(|value| labels(value, shape)).transpose()?;
        let features = features
            .map(|value| {
                let array = float64(value, "features", CoreError::Geometry)?;
                if array.ndim() != 2 || array.shape()[0] != n {
                    return Err(CoreError::Geometry(format!(
                        "features must have shape (n, d) with n = {n} (one row per sample), got {}",
                        shape_repr(array.shape())
                    ))
                    .into());
                }
                readonly(&array, "features")
            })
            .transpose()?;
        let cost = cost
            .map(|value| {
                let array = float64(value, "cost", CoreError::Geometry)?;
                if array.shape() != [n, n] {
                    return Err(CoreError::Geometry(format!(
                        "cost must have shape ({n}, {n}), got {}",
                        shape_repr(array.shape())
                    ))
                    .into());
                }
                readonly(&array, "cost")
            })
            .transpose()?;
        Ok(Extras { reference, groups, features, cost })
    }
}

/// Integer group labels of the shape of one row or of the losses, as int64: float labels must
/// be whole numbers, booleans and anything else are refused.
fn labels<'py>(value: &Bound<'py, PyAny>, shape: &[usize]) -> PyResult<PyReadonlyArrayDyn<'py, i64>> {
    let converted;
    let value = if is_torch_tensor(value)? {
        converted = tensor_to_numpy(value, "groups", CoreError::Groups)?;
        &converted
    } else {
        value
    };
    let array = as_array(value, "groups", CoreError::Groups)?;
    let kind = array.dtype().kind();
    if kind == b'f' {
        let values = contiguous_copy::<f64>(&array)?;
        let values = readonly(&values, "groups")?;
        if !values.as_slice()?.iter().all(|x| x.is_finite() && *x == x.round()) {
            return Err(CoreError::Groups("groups must be integer labels, got non-integer values".into()).into());
        }
    } else if kind != b'i' && kind != b'u' {
        return Err(
            CoreError::Groups(format!("groups must be integer labels, got dtype {}", array.dtype().str()?)).into()
        );
    }
    if !(array.shape() == &shape[shape.len() - 1..] || array.shape() == shape) {
        return Err(CoreError::Groups(format!(
            "groups must have shape {} to match the losses, got {}",
            fitting_shapes(shape),
            shape_repr(array.shape())
        ))
        .into());
    }
    let labels = readonly(&contiguous_copy::<i64>(&array)?, "groups")?;
    if let Some(min) = labels.as_slice()?.iter().copied().min().filter(|&min| min < 0) {
        return Err(CoreError::Groups(format!("groups must be non-negative labels, got {min}")).into());
    }
    Ok(labels)
}

/// A float64 array of real numbers from any array-like (a tensor included).
fn float64<'py>(
    value: &Bound<'py, PyAny>,
    name: &str,
    error: fn(String) -> CoreError,
) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
    if let Some(HostLosses::F64(array)) = HostLosses::of(value) {
        return Ok(array);
    }
    let converted;
    let value = if is_torch_tensor(value)? {
        converted = tensor_to_numpy(value, name, error)?;
        &converted
    } else {
        value
    };
    contiguous_copy::<f64>(&real_array(value, name, error)?)
}

/// `numpy.asarray(value)`, refusing what is not an array of real numbers.
fn real_array<'py>(
    value: &Bound<'py, PyAny>,
    name: &str,
    error: fn(String) -> CoreError,
) -> PyResult<Bound<'py, PyUntypedArray>> {
    let array = as_array(value, name, error)?;
    let dtype = array.dtype();
    let kind = dtype.kind();
    if !matches!(kind, b'f' | b'i' | b'u') {
        let hint = if kind == b'b' { " (convert booleans explicitly)" } else { "" };
        return Err(error(format!("{name} must hold real numbers, got dtype {}{hint}", dtype_name(&array)?)).into());
    }
    Ok(array)
}

/// `numpy.asarray(value)`; what numpy cannot make an array of (ragged lists) is the caller's error.
fn as_array<'py>(
    value: &Bound<'py, PyAny>,
    name: &str,
    error: fn(String) -> CoreError,
) -> PyResult<Bound<'py, PyUntypedArray>> {
    let py = value.py();
    let array = asarray(py)?
        .call1((value,))
        .map_err(|e| PyErr::from(error(format!("{name} must be an array of real numbers: {}", e.value(py)))))?;
    Ok(array.cast_into::<PyUntypedArray>()?)
}

/// `numpy.ascontiguousarray(array, dtype=T)`: the array itself when it already is one.
fn contiguous_copy<'py, T: Element>(array: &Bound<'py, PyUntypedArray>) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let py = array.py();
    let converted = ascontiguousarray(py)?.call1((array, dtype::<T>(py)))?;
    Ok(converted.cast_into::<PyArrayDyn<T>>()?)
}

fn readonly<'py, T: Element>(array: &Bound<'py, PyArrayDyn<T>>, name: &str) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    array.try_readonly().map_err(|e| CoreError::Shape(format!("{name}: {e}")).into())
}

/// Python's `str` of an array's dtype: float64, <U1, bool.
fn dtype_name(array: &Bound<'_, PyUntypedArray>) -> PyResult<String> {
    Ok(array.dtype().str()?.to_cow()?.into_owned())
}

/// A tensor's values as a numpy array on the host: detached, dense, half precision widened.
fn tensor_to_numpy<'py>(
    tensor: &Bound<'py, PyAny>,
    name: &str,
    error: fn(String) -> CoreError,
) -> PyResult<Bound<'py, PyAny>> {
    let py = tensor.py();
    let torch = torch(py)?;
    let mut tensor = tensor.call_method0(intern!(py, "detach"))?;
    if !tensor.getattr(intern!(py, "layout"))?.is(torch.strided.bind(py)) {
        tensor = tensor.call_method0("to_dense")?;
    }
    if tensor.call_method0("is_complex")?.is_truthy()? {
        let dtype = tensor.getattr(intern!(py, "dtype"))?;
        return Err(error(format!("{name} must hold real numbers, got dtype {}", dtype.str()?)).into());
    }
    let dtype = tensor.getattr(intern!(py, "dtype"))?;
    if dtype.is(torch.float16.bind(py)) || dtype.is(torch.bfloat16.bind(py)) {
        tensor = tensor.call_method0("float")?;
    }
    tensor.call_method0("cpu")?.call_method0(intern!(py, "numpy"))
}

/// Whether `value` is a torch tensor, without importing torch (optional, and slow to import).
fn is_torch_tensor(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = value.py();
    Ok(value.get_type().module()?.to_cow()?.starts_with("torch") && value.hasattr(intern!(py, "detach"))?)
}

/// What the conversion uses of torch, looked up once (torch is imported by then: the caller
/// passed a tensor).
struct Torch {
    from_numpy: Py<PyAny>,
    strided: Py<PyAny>,
    float64: Py<PyAny>,
    float32: Py<PyAny>,
    float16: Py<PyAny>,
    bfloat16: Py<PyAny>,
}

fn torch(py: Python<'_>) -> PyResult<&Torch> {
    static TORCH: PyOnceLock<Torch> = PyOnceLock::new();
    TORCH.get_or_try_init(py, || {
        let torch = py.import("torch")?;
        let get = |name: &str| torch.getattr(name).map(Bound::unbind);
        Ok(Torch {
            from_numpy: get("from_numpy")?,
            strided: get("strided")?,
            float64: get("float64")?,
            float32: get("float32")?,
            float16: get("float16")?,
            bfloat16: get("bfloat16")?,
        })
    })
}

fn asarray(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static ASARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    ASARRAY.import(py, "numpy", "asarray")
}

fn ascontiguousarray(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static ASCONTIGUOUSARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    ASCONTIGUOUSARRAY.import(py, "numpy", "ascontiguousarray")
}

/// Python's repr of a shape: (2, 3), (5,), ().
/// The shapes a per-sample argument (reference, groups) may take for losses of `shape`: one
/// row's, shared by every row, or the losses' own; a single one for 1-D losses.
fn fitting_shapes(shape: &[usize]) -> String {
    let row = &shape[shape.len() - 1..];
    match shape.len() {
        1 => shape_repr(row),
        _ => format!("{} or {}", shape_repr(row), shape_repr(shape)),
    }
}

pub(super) fn shape_repr(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    }
}
