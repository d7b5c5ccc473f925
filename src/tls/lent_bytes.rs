//! Received bytes handed to `MemoryBIO.write` straight from the stream
//! transport's read buffer, through one buffer object per thread that is
//! lent for the call. A `memoryview` over the buffer did the same, but
//! made two objects per record (the view and its managed buffer), which
//! cost more than the call's own work on a small record.

use std::cell::OnceCell;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

/// A read-only buffer over bytes lent by [`lend`], for the length of one
/// call; outside it, asking for the buffer raises BufferError.
#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct LentBytes {
    /// The lent bytes; null while none are.
    data: AtomicPtr<u8>,
    len: AtomicUsize,
    /// Buffers given out and not yet released.
    exports: AtomicUsize,
}

#[pymethods]
impl LentBytes {
    /// # Safety
    /// Called by CPython's buffer protocol with a `view` to fill.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let this = slf.get();
        let data = this.data.load(Ordering::Relaxed);
        if data.is_null() {
            return Err(PyBufferError::new_err("no bytes are lent now"));
        }
        // SAFETY: `data` and `len` describe bytes `lend` borrows until the
        // call it makes returns; the view is read-only (FillInfo refuses a
        // writable request) and takes a reference to `slf` for `obj`.
        let filled = unsafe {
            let len = this.len.load(Ordering::Relaxed) as ffi::Py_ssize_t;
            ffi::PyBuffer_FillInfo(view, slf.as_ptr(), data.cast(), len, 1, flags)
        };
        if filled < 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        this.exports.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// # Safety
    /// Called by CPython's buffer protocol for a view `__getbuffer__` filled.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.exports.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `call(object)` with `data` lent through the thread's `LentBytes`, for a
/// callee that releases the buffer before it returns (C code that takes a
/// buffer argument, as `MemoryBIO.write`): a view kept past the call would
/// outlive the borrow, so anything else must get a `memoryview`
/// (`pyhelpers::with_readonly_view`, which can release what is kept).
pub fn lend<T>(py: Python<'_>, data: &[u8], call: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<T>) -> PyResult<T> {
    thread_local! {
        static LENT: OnceCell<Py<LentBytes>> = const { OnceCell::new() };
    }
    let lent = LENT.with(|cell| match cell.get() {
        Some(lent) => Ok(lent.clone_ref(py)),
        None => {
            let lent = Py::new(py, LentBytes { data: AtomicPtr::default(), len: AtomicUsize::new(0), exports: AtomicUsize::new(0) })?;
            Ok::<_, PyErr>(cell.get_or_init(|| lent).clone_ref(py))
        }
    })?;
    let lent = lent.into_bound(py);
    let this = lent.get();
    if !this.data.load(Ordering::Relaxed).is_null() {
        // (lent already, by a call further up this thread's stack)
        return crate::pyhelpers::with_readonly_view(py, data, call);
    }
    this.len.store(data.len(), Ordering::Relaxed);
    this.data.store(data.as_ptr().cast_mut(), Ordering::Relaxed);
    let result = call(lent.as_any());
    this.data.store(std::ptr::null_mut(), Ordering::Relaxed);
    if this.exports.load(Ordering::Relaxed) != 0 {
        return Err(PyBufferError::new_err("a lent buffer was kept past its call"));
    }
    result
}
