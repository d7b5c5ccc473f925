//! Calls from Rust into the package's Python helpers (`ferroloop/_handles.py`)
//! for the cold paths that are asyncio formatting and logging, plus small
//! FFI wrappers the hot paths share.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;


static HELPERS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn helpers(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    HELPERS
        .get_or_try_init(py, || Ok::<_, PyErr>(py.import("ferroloop._handles")?.unbind()))
        .map(|m| m.bind(py))
}

static FUTURE_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `asyncio.Future(loop=loop)`: the C-accelerated future, bound to our loop.
pub fn new_future<'py>(loop_obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = loop_obj.py();
    let future_type = FUTURE_TYPE.get_or_try_init(py, || Ok::<_, PyErr>(py.import("asyncio")?.getattr("Future")?.unbind()))?;
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item(pyo3::intern!(py, "loop"), loop_obj)?;
    future_type.bind(py).call((), Some(&kwargs))
}

/// `contextvars.copy_context()`
pub fn copy_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: called with the GIL held; returns a new reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()).map(Bound::unbind) }
}

pub fn handle_repr<'py>(py: Python<'py>, handle: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    helpers(py)?.call_method1(pyo3::intern!(py, "handle_repr"), (handle,))
}

/// Build asyncio's "Exception in callback ..." context and hand it to the loop.
pub fn report_callback_error(py: Python<'_>, handle: &Bound<'_, PyAny>, func: &Bound<'_, PyAny>, args: &Bound<'_, PyTuple>, err: PyErr) -> PyResult<()> {
    helpers(py)?
        .call_method1(pyo3::intern!(py, "report_callback_error"), (handle, func, args, err.into_value(py)))
        .map(drop)
}

/// asyncio's `_source_traceback` for a handle created now (debug mode only).
pub fn extract_stack(py: Python<'_>) -> PyResult<Py<PyAny>> {
    Ok(helpers(py)?.call_method0(pyo3::intern!(py, "extract_stack"))?.unbind())
}

/// Debug mode: log a callback that ran longer than `slow_callback_duration`.
pub fn warn_slow_callback(py: Python<'_>, handle: &Bound<'_, PyAny>, seconds: f64) -> PyResult<()> {
    helpers(py)?.call_method1(pyo3::intern!(py, "warn_slow_callback"), (handle, seconds)).map(drop)
}

/// The calling thread's id, as `threading.get_ident()` reports it.
pub fn thread_ident() -> u64 {
    // SAFETY: pthread_self has no preconditions; CPython's get_ident is the same value.
    unsafe { libc::pthread_self() as u64 }
}
