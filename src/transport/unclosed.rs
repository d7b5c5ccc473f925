//! `__del__` of the socket transports' Python class (`RustTransport`), as
//! a method whose function is Rust's. Every transport object runs it once,
//! when it is freed, and nearly always finds `_sock` None (the connection
//! was closed) and has nothing to do; as Python code, that was a frame per
//! connection. An unclosed transport runs its `_warn_unclosed()` (Python):
//! the ResourceWarning, closing its socket, leaving its server.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;

use super::slots::{self, Slot};
use crate::pyhelpers::StaticMethodDef;

static DEL: StaticMethodDef = StaticMethodDef::noargs(c"__del__", del);

/// `__del__` for `class` (RustTransport): a method descriptor, which
/// CPython's finalizer calls with the object and no argument tuple.
#[pyfunction]
pub fn transport_finalizer<'py>(class: &Bound<'py, PyType>) -> PyResult<Bound<'py, PyAny>> {
    crate::pyhelpers::method_descriptor(class, &DEL)
}

unsafe extern "C" fn del(transport: *mut ffi::PyObject, _no_args: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a method with the GIL held, and `transport` is
    // a live object it lends for the call (an instance of the class: the
    // method descriptor checked).
    let py = unsafe { Python::assume_attached() };
    let transport = unsafe { Bound::from_borrowed_ptr(py, transport) };
    let result = crate::pyhelpers::catching_panics(|| finalize(&transport));
    crate::pyhelpers::into_c_result(py, result.map(|()| py.None()))
}

fn finalize(transport: &Bound<'_, PyAny>) -> PyResult<()> {
    match slots::get(transport, Slot::Sock)? {
        Some(sock) if !sock.is_none() => transport.call_method0(pyo3::intern!(transport.py(), "_warn_unclosed")).map(drop),
        _ => Ok(()),
    }
}
