//! Callbacks the loop runs as plain Rust calls: those of ferroloop's own
//! transports, bound methods of their cores (the fd callbacks `_read_ready`
//! and `_write_ready`, and `_start_reading`) or of the transport objects
//! (`_call_connection_lost`), which each connection schedules once. The
//! handle holds (and shows) the bound method, as asyncio's handle holds its
//! transport's; only the call skips Python's call protocol (dispatch,
//! argument parsing, the binding layer's entry), which cost several
//! hundred instructions per callback.

use std::sync::OnceLock;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyType};

/// The Rust function behind a method, called with the object it is bound
/// to (and the method's one argument).
#[derive(Clone, Copy)]
pub enum NativeFn {
    NoArgs(fn(&Bound<'_, PyAny>) -> PyResult<()>),
    OneArg(fn(&Bound<'_, PyAny>, &Bound<'_, PyAny>) -> PyResult<()>),
}

/// `(address of the method's PyMethodDef, its function)`
static NATIVE: OnceLock<Vec<(usize, NativeFn)>> = OnceLock::new();

/// The PyMethodDef of `type_.<name>`, a method of a type written in Rust
/// (a method descriptor), as `init` takes it.
pub fn def_of(type_: &Bound<'_, PyType>, name: &str) -> PyResult<usize> {
    let descriptor = type_.getattr("__dict__")?.get_item(name)?;
    // SAFETY: comparing the type of a live object with a static type object.
    let is_method = unsafe { ffi::Py_TYPE(descriptor.as_ptr()) == &raw mut ffi::PyMethodDescr_Type };
    if !is_method {
        return Err(PyTypeError::new_err(format!("{name} is not a method of its class")));
    }
    // SAFETY: a method_descriptor's struct is PyMethodDescrObject; its
    // PyMethodDef lives as long as the class (here: the module).
    Ok(unsafe { (*descriptor.as_ptr().cast::<ffi::PyMethodDescrObject>()).d_method } as usize)
}

/// Registers the methods (by the address of their PyMethodDef, which a
/// bound method points to) with the function to call instead; once, when
/// the module is initialised.
pub fn init(table: Vec<(usize, NativeFn)>) {
    // (initialised again, in another interpreter: the same defs)
    let _ = NATIVE.set(table);
}

/// `func(*args)` as a Rust call, if `func` is one of those methods, bound,
/// and given as many arguments as it takes; None for anything else.
pub fn call(func: &Bound<'_, PyAny>, args: &Bound<'_, PyTuple>) -> Option<PyResult<()>> {
    let table = NATIVE.get()?;
    let ptr = func.as_ptr();
    // SAFETY: a type check of a live object, then reading the fields of a
    // builtin method, whose struct PyCFunctionObject is.
    let (def, bound_to) = unsafe {
        if ffi::PyCFunction_Check(ptr) == 0 {
            return None;
        }
        let method = &*ptr.cast::<ffi::PyCFunctionObject>();
        (method.m_ml as usize, method.m_self)
    };
    let native = table.iter().find(|(d, _)| *d == def)?.1;
    let arity_matches = match native {
        NativeFn::NoArgs(_) => args.is_empty(),
        NativeFn::OneArg(_) => args.len() == 1,
    };
    if bound_to.is_null() || !arity_matches {
        return None;
    }
    // SAFETY: `m_self` is a reference the method object holds; `func` is
    // alive for this call, so is it. (A method of a class is bound only to
    // its instances, which is what `native` expects.)
    let obj = unsafe { Bound::from_borrowed_ptr(func.py(), bound_to) };
    let run = || match native {
        NativeFn::NoArgs(f) => f(&obj),
        NativeFn::OneArg(f) => f(&obj, &args.get_item(0)?),
    };
    Some(crate::pyhelpers::catching_panics(run))
}
