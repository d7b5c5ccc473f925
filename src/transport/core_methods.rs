//! How a transport's Python object takes its Rust core's methods as its
//! own: each is a method descriptor on the class, as a method of a type
//! written in C would be, whose function finds the object's core
//! (`self._core`) and calls the core's method of the same name; those a
//! connection calls often, of a socket core, as Rust functions. So
//! `transport.write(data)` has no Python frame, CPython's method-call
//! specialisation applies to it, and a transport object holds no bound
//! methods of its own.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString, PyType};

use super::datagram::DatagramTransportCore;
use super::slots::{self, Slot};
use super::stream::StreamTransportCore;
use crate::pyhelpers::{self, StaticMethodDef};

/// `core_method(class, name)`: the method descriptor that makes the core's
/// method `name` a method of `class`'s objects.
#[pyfunction]
pub fn core_method<'py>(class: &Bound<'py, PyType>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let Some(def) = DEFS.iter().find(|def| def.name() == name) else {
        return Err(pyo3::exceptions::PyValueError::new_err(format!("no core method {name:?}")));
    };
    pyhelpers::method_descriptor(class, def)
}

/// The object's core: its `_core` slot for a socket transport, else its
/// `_core` attribute (the pipe transports keep it in their dict).
fn core_of<'py>(transport: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    match slots::get_if_instance(transport, Slot::Core)? {
        Some(core) => Ok(core),
        None => transport.getattr(pyo3::intern!(transport.py(), "_core")),
    }
}

/// `self._core.<name>(*args, **kwargs)` for a vectorcall's arguments.
///
/// # Safety
/// `args` holds `nargs` positional arguments then one per name in
/// `kwnames` (a tuple or NULL), all borrowed from the caller for the call.
unsafe fn forward(transport: &Bound<'_, PyAny>, name: &Bound<'_, PyString>, args: *const *mut ffi::PyObject, nargs: ffi::Py_ssize_t, kwnames: *mut ffi::PyObject) -> PyResult<Py<PyAny>> {
    let py = transport.py();
    let core = core_of(transport)?;
    // SAFETY: a tuple's size, when there is one.
    let keywords = if kwnames.is_null() { 0 } else { unsafe { ffi::PyTuple_GET_SIZE(kwnames) } };
    let count = usize::try_from(nargs + keywords).unwrap_or(0);
    // The core first, then the caller's arguments, as VectorcallMethod
    // takes them (on the stack for the usual few).
    let mut few = [std::ptr::null_mut(); 8];
    let mut many = Vec::new();
    let all: &mut [*mut ffi::PyObject] = if count < few.len() { &mut few[..=count] } else { many.resize(count + 1, std::ptr::null_mut()); &mut many };
    all[0] = core.as_ptr();
    if count > 0 {
        // SAFETY: the caller's contract: `count` readable pointers.
        all[1..].copy_from_slice(unsafe { std::slice::from_raw_parts(args, count) });
    }
    // SAFETY: `all` holds borrowed references that outlive the call, the
    // first being the object the method is looked up on; it returns a new
    // reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyObject_VectorcallMethod(name.as_ptr(), all.as_ptr(), (nargs + 1) as usize, kwnames)) }.map(Bound::unbind)
}

/// A socket transport's core, for the methods called as Rust functions.
enum SocketCore<'py> {
    Stream(Bound<'py, StreamTransportCore>),
    Datagram(Bound<'py, DatagramTransportCore>),
}

/// The object's core if it is a socket core and the call has only
/// positional arguments (`max_args` at most): then the method may be called
/// directly; else None, and the call is forwarded.
fn socket_core<'py>(transport: &Bound<'py, PyAny>, nargs: ffi::Py_ssize_t, kwnames: *mut ffi::PyObject, max_args: ffi::Py_ssize_t) -> PyResult<Option<SocketCore<'py>>> {
    if nargs > max_args || !kwnames.is_null() {
        return Ok(None);
    }
    let core = core_of(transport)?;
    Ok(match core.cast_into_exact::<StreamTransportCore>() {
        Ok(stream) => Some(SocketCore::Stream(stream)),
        Err(e) => e.into_inner().cast_into_exact::<DatagramTransportCore>().ok().map(SocketCore::Datagram),
    })
}

/// The positional argument `index` (which the caller checked is there).
///
/// # Safety
/// As [`forward`], with `index < nargs`.
unsafe fn arg<'py>(py: Python<'py>, args: *const *mut ffi::PyObject, index: usize) -> Bound<'py, PyAny> {
    // SAFETY: the caller's contract; borrowed for the call.
    unsafe { Bound::from_borrowed_ptr(py, *args.add(index)) }
}

/// `transport.write(data)`
///
/// # Safety
/// As [`forward`].
unsafe fn write_direct(transport: &Bound<'_, PyAny>, args: *const *mut ffi::PyObject, nargs: ffi::Py_ssize_t, kwnames: *mut ffi::PyObject) -> PyResult<Py<PyAny>> {
    let py = transport.py();
    if nargs == 1 {
        if let Some(SocketCore::Stream(core)) = socket_core(transport, nargs, kwnames, 1)? {
            StreamTransportCore::write(&core, &unsafe { arg(py, args, 0) })?;
            return Ok(py.None());
        }
    }
    unsafe { forward(transport, pyo3::intern!(py, "write"), args, nargs, kwnames) }
}

/// `transport.sendto(data, addr=None)`
///
/// # Safety
/// As [`forward`].
unsafe fn sendto_direct(transport: &Bound<'_, PyAny>, args: *const *mut ffi::PyObject, nargs: ffi::Py_ssize_t, kwnames: *mut ffi::PyObject) -> PyResult<Py<PyAny>> {
    let py = transport.py();
    if nargs >= 1 {
        if let Some(SocketCore::Datagram(core)) = socket_core(transport, nargs, kwnames, 2)? {
            let addr = (nargs == 2).then(|| unsafe { arg(py, args, 1) }).filter(|a| !a.is_none());
            DatagramTransportCore::sendto(&core, &unsafe { arg(py, args, 0) }, addr)?;
            return Ok(py.None());
        }
    }
    unsafe { forward(transport, pyo3::intern!(py, "sendto"), args, nargs, kwnames) }
}

/// `$call` with `$core` bound to the core, of whichever type it is.
macro_rules! on_either {
    ($socket_core:expr, |$core:ident| $call:expr) => {
        match $socket_core {
            SocketCore::Stream($core) => $call,
            SocketCore::Datagram($core) => $call,
        }
    };
}

/// A method without arguments that both socket cores have, called
/// directly: `$call` (with `$core` the core, of either type) gives the
/// result.
macro_rules! socket_core_noargs {
    ($fn_name:ident, $method:ident, |$core:ident, $py:ident| $call:expr) => {
        /// # Safety
        /// As [`forward`].
        unsafe fn $fn_name(transport: &Bound<'_, PyAny>, args: *const *mut ffi::PyObject, nargs: ffi::Py_ssize_t, kwnames: *mut ffi::PyObject) -> PyResult<Py<PyAny>> {
            let $py = transport.py();
            match socket_core(transport, nargs, kwnames, 0)? {
                Some(socket_core) => on_either!(socket_core, |$core| $call),
                None => unsafe { forward(transport, pyo3::intern!($py, stringify!($method)), args, nargs, kwnames) },
            }
        }
    };
}

socket_core_noargs!(is_closing_direct, is_closing, |core, py| Ok(PyBool::new(py, core.get().is_closing()).to_owned().into_any().unbind()));
socket_core_noargs!(is_reading_direct, is_reading, |core, py| Ok(PyBool::new(py, core.get().is_reading()).to_owned().into_any().unbind()));
socket_core_noargs!(pause_reading_direct, pause_reading, |core, py| core.get().pause_reading(py).map(|()| py.None()));
socket_core_noargs!(resume_reading_direct, resume_reading, |core, py| core.get().resume_reading_of(core.as_any()).map(|()| py.None()));
socket_core_noargs!(close_direct, close, |core, py| core.get().close(py).map(|()| py.None()));
socket_core_noargs!(abort_direct, abort, |core, py| core.get().abort(py).map(|()| py.None()));

/// One C function per method name (a method descriptor's function is told
/// only its object and arguments), each calling `$body`.
macro_rules! core_method_defs {
    ($($name:ident => $body:expr),* $(,)?) => {
        $(
            unsafe extern "C" fn $name(transport: *mut ffi::PyObject, args: *const *mut ffi::PyObject, nargs: ffi::Py_ssize_t, kwnames: *mut ffi::PyObject) -> *mut ffi::PyObject {
                // SAFETY: CPython calls a method with the GIL held, with a live
                // object of the class (the descriptor checked) and arguments
                // as `forward` describes, all lent for the call.
                let py = unsafe { Python::assume_attached() };
                let transport = unsafe { Bound::from_borrowed_ptr(py, transport) };
                let body: unsafe fn(&Bound<'_, PyAny>, *const *mut ffi::PyObject, ffi::Py_ssize_t, *mut ffi::PyObject) -> PyResult<Py<PyAny>> = $body;
                let result = pyhelpers::catching_panics(|| unsafe { body(&transport, args, nargs, kwnames) });
                pyhelpers::into_c_result(py, result)
            }
        )*

        static DEFS: &[StaticMethodDef] = &[
            $(StaticMethodDef::fastcall_keywords(
                // (a C string literal of the name)
                match std::ffi::CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes()) {
                    Ok(name) => name,
                    Err(_) => panic!("method name"),
                },
                $name,
            )),*
        ];
    };
}

/// A method that forwards to the core's method of the same name.
macro_rules! forwarded {
    ($name:ident) => {
        |transport, args, nargs, kwnames| unsafe { forward(transport, pyo3::intern!(transport.py(), stringify!($name)), args, nargs, kwnames) }
    };
}

core_method_defs! {
    write => write_direct,
    writelines => forwarded!(writelines),
    write_eof => forwarded!(write_eof),
    can_write_eof => forwarded!(can_write_eof),
    sendto => sendto_direct,
    close => close_direct,
    abort => abort_direct,
    is_closing => is_closing_direct,
    is_reading => is_reading_direct,
    pause_reading => pause_reading_direct,
    resume_reading => resume_reading_direct,
    get_write_buffer_size => forwarded!(get_write_buffer_size),
    get_protocol => forwarded!(get_protocol),
    set_protocol => forwarded!(set_protocol),
    _force_close => forwarded!(_force_close),
    _close => forwarded!(_close),
    _read_ready => forwarded!(_read_ready),
    _write_ready => forwarded!(_write_ready),
    _call_connection_lost => forwarded!(_call_connection_lost),
    _make_empty_waiter => forwarded!(_make_empty_waiter),
    _reset_empty_waiter => forwarded!(_reset_empty_waiter),
    _maybe_pause_protocol => forwarded!(_maybe_pause_protocol),
    _maybe_resume_protocol => forwarded!(_maybe_resume_protocol),
}

/// `transport._call_connection_lost(exc)`, which the transport schedules
/// once per connection (as asyncio does), as a Rust call from its handle.
pub fn native_call_connection_lost() -> (usize, crate::native_callbacks::NativeFn) {
    let def = DEFS.iter().find(|def| def.name() == "_call_connection_lost").map_or(0, StaticMethodDef::address);
    (def, crate::native_callbacks::NativeFn::OneArg(call_connection_lost))
}

fn call_connection_lost(transport: &Bound<'_, PyAny>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
    let core = core_of(transport)?;
    if core.is_exact_instance_of::<StreamTransportCore>() {
        return StreamTransportCore::native_call_connection_lost(&core, exc);
    }
    if core.is_exact_instance_of::<DatagramTransportCore>() {
        return DatagramTransportCore::native_call_connection_lost(&core, exc);
    }
    core.call_method1(pyo3::intern!(transport.py(), "_call_connection_lost"), (exc,)).map(drop)
}
