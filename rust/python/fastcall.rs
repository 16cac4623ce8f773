//! Module functions called the way CPython calls its own: METH_FASTCALL | METH_KEYWORDS.
//!
//! PyO3 registers the functions of an abi3 build for Python 3.9 as METH_VARARGS | METH_KEYWORDS
//! (the stable ABI lists METH_FASTCALL from 3.10 on). Each call then packs its arguments into a
//! new tuple and its keywords into a new dict, and PyO3 decodes every keyword's name into a new
//! bytes object, since that ABI has no `PyUnicode_AsUTF8AndSize`. Under METH_FASTCALL CPython
//! passes its own argument array and a tuple of the keywords' names, and the names written in
//! Python source are interned strings, found here by identity: no tuple, dict or bytes object
//! is built per call (benches/call_loop.py counts a call's instructions).
//!
//! METH_FASTCALL | METH_KEYWORDS is public API since CPython 3.7 with the same flag value and
//! signature in every version since; 3.10 only added it to the stable ABI. So the one wheel
//! still serves 3.9 and later. pyo3-ffi leaves the flag out of an abi3-py39 build: it is defined
//! here.

use std::ffi::{c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyTuple};

/// CPython's `METH_FASTCALL` (Include/methodobject.h, 0x0080 since 3.7).
const METH_FASTCALL: c_int = 0x0080;

/// The C signature of a METH_FASTCALL | METH_KEYWORDS function: the module, the positional
/// arguments followed by the keyword arguments' values, the number of positional ones, and a
/// tuple of the keywords' names (NULL when there are none).
pub(super) type FastcallFunction = unsafe extern "C" fn(
    module: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject;

/// A `PyMethodDef` that lives as long as the process, as CPython requires of it.
pub(super) struct MethodDef(ffi::PyMethodDef);

// SAFETY: CPython only reads the definition; the pointers in it are to static data.
unsafe impl Sync for MethodDef {}

impl MethodDef {
    /// `doc` starts with the signature line `name(...)\n--\n\n`, where `inspect` finds it.
    pub(super) const fn new(name: &'static CStr, function: FastcallFunction, doc: &'static CStr) -> Self {
        MethodDef(ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                // SAFETY: CPython casts the pointer back to `FastcallFunction` because of the
                // flags below (the C API's own idiom, `(PyCFunction)(void(*)(void))f`).
                PyCFunction: unsafe { std::mem::transmute::<FastcallFunction, ffi::PyCFunction>(function) },
            },
            ml_flags: METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: doc.as_ptr(),
        })
    }

    /// The function object, bound to `module` like the functions PyO3 adds.
    pub(super) fn add_to(&'static self, module: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = module.py();
        let name = module.name()?;
        // SAFETY: a static definition, a live module and its name; the GIL is held.
        let function = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyCFunction_NewEx(std::ptr::from_ref(&self.0).cast_mut(), module.as_ptr(), name.as_ptr()),
            )?
        };
        // SAFETY: ml_name is a static C string.
        let attribute = unsafe { CStr::from_ptr(self.0.ml_name) }.to_str().expect("an ASCII name");
        module.add(attribute, function)
    }
}

/// What a function takes: the parameters in order, of which the first `positional` may be
/// passed by position (the rest are keyword-only) and the first `required` must be given
/// (fewer than `positional`: the errors are worded for a function with defaults).
pub(super) struct Signature<const N: usize> {
    pub function: &'static str,
    pub parameters: [&'static str; N],
    pub positional: usize,
    pub required: usize,
    pub interned: PyOnceLock<[Py<PyString>; N]>,
}

/// The arguments of one call, by parameter; None where the caller left one out.
pub(super) type BoundArguments<'a, 'py, const N: usize> = [Option<Borrowed<'a, 'py, PyAny>>; N];

impl<const N: usize> Signature<N> {
    /// Binds the arguments of a call to the parameters, raising the TypeError Python would for
    /// an unknown keyword, one given twice, too many positional arguments or a missing one, in
    /// that order and in the same words (CPython's `initialize_locals`).
    ///
    /// # Safety
    /// `args`, `nargs` and `kwnames` as CPython passes them to a METH_FASTCALL | METH_KEYWORDS
    /// function; the GIL is held; the result does not outlive the call.
    pub(super) unsafe fn bind<'a, 'py>(
        &self,
        py: Python<'py>,
        args: *const *mut ffi::PyObject,
        nargs: ffi::Py_ssize_t,
        kwnames: *mut ffi::PyObject,
    ) -> PyResult<BoundArguments<'a, 'py, N>> {
        let mut bound: BoundArguments<'a, 'py, N> = [None; N];
        let given = usize::try_from(nargs).unwrap_or(0);
        // SAFETY: CPython passes `given` positional arguments, then one value per keyword.
        let argument = |i: usize| unsafe { Borrowed::from_ptr(py, *args.add(i)) };
        for (i, slot) in bound.iter_mut().take(given.min(self.positional)).enumerate() {
            *slot = Some(argument(i));
        }
        if !kwnames.is_null() {
            // SAFETY: a tuple of strings, owned by the caller for the length of the call.
            let kwnames = unsafe { Borrowed::from_ptr(py, kwnames).cast_unchecked::<PyTuple>() };
            let interned =
                self.interned.get_or_init(py, || self.parameters.map(|name| PyString::intern(py, name).unbind()));
            for (k, keyword) in kwnames.iter_borrowed().enumerate() {
                let i = self.parameter_of(interned, &keyword)?;
                if bound[i].is_some() {
                    return Err(PyTypeError::new_err(format!(
                        "{}() got multiple values for argument '{}'",
                        self.function, self.parameters[i]
                    )));
                }
                bound[i] = Some(argument(given + k));
            }
        }
        if given > self.positional {
            return Err(self.too_many_positional(given, &bound));
        }
        if let Some(missing) = (0..self.required).find(|&i| bound[i].is_none()) {
            return Err(PyTypeError::new_err(format!(
                "{}() missing 1 required positional argument: '{}'",
                self.function, self.parameters[missing]
            )));
        }
        Ok(bound)
    }

    /// CPython's words for it (`too_many_positional` in Python/ceval.c), which count the
    /// keyword-only arguments given too.
    fn too_many_positional(&self, given: usize, bound: &BoundArguments<'_, '_, N>) -> PyErr {
        let plural = |count: usize| if count == 1 { "" } else { "s" };
        let keyword_only = bound[self.positional..].iter().filter(|value| value.is_some()).count();
        let keyword_only = match keyword_only {
            0 => String::new(),
            k => format!(" positional argument{} (and {k} keyword-only argument{})", plural(given), plural(k)),
        };
        PyTypeError::new_err(format!(
            "{}() takes from {} to {} positional arguments but {given}{keyword_only} were given",
            self.function, self.required, self.positional
        ))
    }

    /// Which parameter a keyword names: by identity with the interned names (every name in
    /// Python source), else by its text.
    fn parameter_of(&self, interned: &[Py<PyString>; N], keyword: &Borrowed<'_, '_, PyAny>) -> PyResult<usize> {
        if let Some(i) = interned.iter().position(|name| name.as_ptr() == keyword.as_ptr()) {
            return Ok(i);
        }
        let keyword = keyword.cast::<PyString>()?;
        let text = keyword.to_cow()?;
        self.parameters.iter().position(|&name| name == text).ok_or_else(|| {
            PyTypeError::new_err(format!("{}() got an unexpected keyword argument '{text}'", self.function))
        })
    }
}

/// The body of a METH_FASTCALL function: runs `body` and hands CPython its result, or sets its
/// error and returns NULL. A panic becomes a PanicException here: none may unwind into C.
///
/// # Safety
/// Called by CPython with the GIL held.
pub(super) unsafe fn trampoline(body: impl FnOnce(Python<'_>) -> PyResult<Bound<'_, PyAny>>) -> *mut ffi::PyObject {
    // SAFETY: CPython holds the GIL while it calls a function.
    let py = unsafe { Python::assume_attached() };
    let error = match catch_unwind(AssertUnwindSafe(|| body(py))) {
        Ok(Ok(result)) => return result.into_ptr(),
        Ok(Err(error)) => error,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("panic in Rust code");
            PanicException::new_err(message.to_string())
        }
    };
    error.restore(py);
    std::ptr::null_mut()
}

/// An optional float argument: None and an absent one are None.
pub(super) fn optional_float(value: Option<Borrowed<'_, '_, PyAny>>, name: &str) -> PyResult<Option<f64>> {
    match value {
        Some(value) if !value.is_none() => float(value, name).map(Some),
        _ => Ok(None),
    }
}

/// A float argument, with the name of the parameter in the error as PyO3 words it.
pub(super) fn float(value: Borrowed<'_, '_, PyAny>, name: &str) -> PyResult<f64> {
    value.extract::<f64>().map_err(|error| {
        if error.is_instance_of::<PyTypeError>(value.py()) {
            PyTypeError::new_err(format!("argument '{name}': {}", error.value(value.py())))
        } else if error.is_instance_of::<PyValueError>(value.py()) {
            PyValueError::new_err(format!("argument '{name}': {}", error.value(value.py())))
        } else {
            error
        }
    })
}

/// An optional object argument: None and an absent one are None.
pub(super) fn optional<'a, 'py>(value: Option<Borrowed<'a, 'py, PyAny>>) -> Option<Borrowed<'a, 'py, PyAny>> {
    value.filter(|value| !value.is_none())
}
