//! `call_soon`, `call_soon_threadsafe`, `call_later` and `call_at`: build the
//! handle and queue it. asyncio's checks are kept in asyncio's order (the
//! closed check first, then debug-mode thread/callback checks).

use std::ffi::CStr;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFloat, PyInt, PyString, PyTuple};
use pyo3::{Borrowed, PyClassInitializer};

use super::{lock, reject_none, time_source, LoopCore, Ready};
use crate::handles::{Callback, Handle, TimerHandle};
use crate::timer_heap::Deadline;
use crate::pyhelpers;

fn make_handle(slf: &Bound<'_, LoopCore>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>, context: Option<Bound<'_, PyAny>>, one_shot: bool) -> PyResult<Handle> {
    let (context, source_traceback) = handle_env(slf, context)?;
    Ok(Handle::new(callback.unbind(), args.unbind(), context, slf.get().shared.clone(), one_shot, source_traceback))
}

/// The context (the one given, else a copy of the current one) and, in
/// debug mode, the source traceback of a handle made now.
fn handle_env(slf: &Bound<'_, LoopCore>, context: Option<Bound<'_, PyAny>>) -> PyResult<(Py<PyAny>, Option<Py<PyAny>>)> {
    let py = slf.py();
    slf.get().shared.bind_loop(slf.as_any())?;
    let context = match context {
        Some(c) if !c.is_none() => c.unbind(),
        _ => pyhelpers::copy_context(py)?,
    };
    let source_traceback = if slf.get().debug() { Some(pyhelpers::extract_stack(py)?) } else { None };
    Ok((context, source_traceback))
}

/// A handle for an fd callback, which runs every time the fd is ready.
pub fn new_fd_handle(slf: &Bound<'_, LoopCore>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<Py<Handle>> {
    let handle = Py::new(slf.py(), make_handle(slf, callback, args, None, false)?)?;
    pyhelpers::untrack(&handle);
    Ok(handle)
}

/// `call_soon` and `call_soon_threadsafe`, which differ only in the thread
/// check and in waking a loop that sleeps in poll.
pub fn call_soon(slf: &Bound<'_, LoopCore>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>, context: Option<Bound<'_, PyAny>>, threadsafe: bool) -> PyResult<Py<Handle>> {
    let py = slf.py();
    let core = slf.get();
    core.check_closed()?;
    if core.debug() {
        let method = if threadsafe { "call_soon_threadsafe" } else { "call_soon" };
        LoopCore::debug_checks(slf, &callback, method, !threadsafe)?;
    }
    let (context, source_traceback) = handle_env(slf, context)?;
    let callback = Callback { func: callback.unbind(), args: args.unbind() };
    let handle = Handle::new_one_shot(py, callback, context, &core.shared, source_traceback)?;
    let wake = {
        let mut s = lock(&core.sched);
        s.ready.push_back(Ready::Native(handle.clone_ref(py)));
        threadsafe && s.claim_wake()
    };
    if wake {
        core.wake();
    }
    Ok(handle)
}

// ----- call_soon and call_soon_threadsafe as raw fastcall methods ---------
//
// Task.__step calls `loop.call_soon(step, context=ctx)` for every step, so
// these two skip PyO3's generic argument extraction: CPython passes the
// arguments as a vector (`nargs` positional values, then one value per name
// in `kwnames`) and `(callback, *args, context=None)` is parsed here, with
// asyncio's messages for bad calls.

/// `LoopCore.call_soon` or `LoopCore.call_soon_threadsafe`: the method
/// descriptor PyType_Ready would make for a C type's METH_FASTCALL method.
/// The method table installs it as a class attribute.
pub fn fast_method(py: Python<'_>, threadsafe: bool) -> PyResult<Py<PyAny>> {
    let (name, doc, meth): (&'static CStr, &'static CStr, ffi::PyCFunctionFastWithKeywords) = if threadsafe {
        (c"call_soon_threadsafe", c"call_soon_threadsafe($self, callback, *args, context=None)\n--\n\n", call_soon_threadsafe_raw)
    } else {
        (c"call_soon", c"call_soon($self, callback, *args, context=None)\n--\n\n", call_soon_raw)
    };
    // Leaked on purpose: the descriptor points at it for as long as the class lives.
    let def = Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: meth },
        ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ml_doc: doc.as_ptr(),
    }));
    // During class creation PyO3 hands out the type object already (its
    // dict is being filled with what this returns).
    let ty = py.get_type::<LoopCore>();
    // SAFETY: we are attached, `def` lives forever and its flags match the
    // signature of its function; the result is a new reference or NULL with
    // an exception set.
    let descr = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(ty.as_type_ptr(), def)) }?;
    Ok(descr.unbind())
}

unsafe extern "C" fn call_soon_raw(slf: *mut ffi::PyObject, args: *const *mut ffi::PyObject, nargs: ffi::Py_ssize_t, kwnames: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: only CPython calls this, through the descriptor above, which
    // is what `fastcall` requires.
    unsafe { fastcall(slf, args, nargs, kwnames, false) }
}

unsafe extern "C" fn call_soon_threadsafe_raw(slf: *mut ffi::PyObject, args: *const *mut ffi::PyObject, nargs: ffi::Py_ssize_t, kwnames: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: as for `call_soon_raw`.
    unsafe { fastcall(slf, args, nargs, kwnames, true) }
}

/// The body of both raw methods: a new reference to the handle, or NULL with
/// an exception set. A Rust panic becomes a PanicException here, as in the
/// methods PyO3 generates; nothing unwinds into Python.
///
/// # Safety
/// CPython's METH_FASTCALL|METH_KEYWORDS contract, as the method descriptor
/// enforces it: the thread is attached, `slf` is an instance of LoopCore,
/// `args` holds `nargs` positional values followed by one value for each
/// name in `kwnames` (a tuple of str, or NULL), all borrowed for the call.
unsafe fn fastcall(slf: *mut ffi::PyObject, args: *const *mut ffi::PyObject, nargs: ffi::Py_ssize_t, kwnames: *mut ffi::PyObject, threadsafe: bool) -> *mut ffi::PyObject {
    // SAFETY: CPython is calling us, so the thread is attached. PyO3 is not
    // told (its own methods tell it; Python::attach would cost a
    // PyGILState_Ensure on threads PyO3 has not seen): a Py<T> dropped in
    // here on such a thread has its decref deferred to PyO3's pool, which
    // is sound, only later. The scheduling path drops Bounds instead, bar
    // error paths.
    let py = unsafe { Python::assume_attached() };
    let outcome = pyhelpers::catching_panics(|| {
        // SAFETY: the caller's contract, passed on.
        unsafe { call_soon_vector(py, slf, args, nargs, kwnames, threadsafe) }
    });
    pyhelpers::into_c_result(py, outcome.map(Py::into_any))
}

/// Parse `(callback, *args, context=None)` from the vector and schedule.
///
/// # Safety
/// As for [`fastcall`].
unsafe fn call_soon_vector(py: Python<'_>, slf: *mut ffi::PyObject, args: *const *mut ffi::PyObject, nargs: ffi::Py_ssize_t, kwnames: *mut ffi::PyObject, threadsafe: bool) -> PyResult<Py<Handle>> {
    // SAFETY: `slf` is a LoopCore borrowed for the call: the method
    // descriptor type-checks it before calling us.
    let slf = unsafe { Borrowed::from_ptr(py, slf).cast_unchecked::<LoopCore>() };
    // SAFETY: `kwnames` is NULL or a tuple (the caller's contract).
    let names = unsafe { Borrowed::from_ptr_or_opt(py, kwnames).map(|n| n.cast_unchecked::<PyTuple>()) };
    let nargs = nargs as usize;
    let total = nargs + names.map_or(0, |n| n.len());
    // SAFETY: `args` holds that many live objects (the caller's contract);
    // it may be NULL when there are none.
    let values = if total == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(args, total) } };
    let (positional, keywords) = values.split_at(nargs);
    let (callback, rest, context) = match names {
        Some(names) if is_context_only(names) => (positional.first().copied(), positional.get(1..).unwrap_or_default(), Some(keywords[0])),
        _ => parse_keywords(py, positional, names, keywords, threadsafe)?,
    };
    let Some(callback) = callback else {
        return Err(PyTypeError::new_err(format!("BaseEventLoop.{}() missing 1 required positional argument: 'callback'", method_name(threadsafe))));
    };
    let args = pyhelpers::tuple_from_slice(py, rest)?;
    // SAFETY: both are live objects of the vector, borrowed for the call.
    let (callback, context) = unsafe { (Bound::from_borrowed_ptr(py, callback), context.map(|c| Bound::from_borrowed_ptr(py, c))) };
    call_soon(&slf, callback, args, context, threadsafe)
}

type RawObject = *mut ffi::PyObject;

/// The general case of [`call_soon_vector`]: any keywords, matched in order
/// with PyO3's rules and messages. Returns the callback (if given), the
/// extra positional arguments and the context (if given).
fn parse_keywords<'a>(py: Python<'_>, positional: &'a [RawObject], names: Option<Borrowed<'_, '_, PyTuple>>, keywords: &[RawObject], threadsafe: bool) -> PyResult<(Option<RawObject>, &'a [RawObject], Option<RawObject>)> {
    let (mut callback, rest) = match positional.split_first() {
        Some((first, rest)) => (Some(*first), rest),
        None => (None, positional),
    };
    let mut context = None;
    for (name, &value) in names.iter().flat_map(|n| n.iter_borrowed()).zip(keywords) {
        let slot = if is_keyword(&name, pyo3::intern!(py, "context"), "context") {
            &mut context
        } else if is_keyword(&name, pyo3::intern!(py, "callback"), "callback") {
            &mut callback
        } else {
            let hint = keyword_suggestion(&name).unwrap_or_default();
            return Err(PyTypeError::new_err(format!("BaseEventLoop.{}() got an unexpected keyword argument '{}'{hint}", method_name(threadsafe), *name)));
        };
        if slot.replace(value).is_some() {
            return Err(PyTypeError::new_err(format!("BaseEventLoop.{}() got multiple values for argument '{}'", method_name(threadsafe), *name)));
        }
    }
    Ok((callback, rest, context))
}

/// 3.13+ ends the message with the nearest parameter name, computed by the
/// interpreter's own `_suggestions` (over all of the function's parameter
/// names, `self` included, as its calls do).
fn keyword_suggestion(name: &Borrowed<'_, '_, PyAny>) -> Option<String> {
    let py = name.py();
    if py.version_info() < (3, 13) {
        return None;
    }
    let candidates = ["self", "callback", "context"];
    let suggestion = py.import("_suggestions").ok()?.call_method1("_generate_suggestions", (candidates, name)).ok()?;
    (!suggestion.is_none()).then(|| format!(". Did you mean '{suggestion}'?"))
}

fn method_name(threadsafe: bool) -> &'static str {
    if threadsafe { "call_soon_threadsafe" } else { "call_soon" }
}

/// Whether a keyword name (always a str) is `text`: by identity for the
/// interned names of Python call sites, else by value, as PyO3 compares.
fn is_keyword(name: &Borrowed<'_, '_, PyAny>, interned: &Bound<'_, PyString>, text: &str) -> bool {
    name.is(interned) || name.cast::<PyString>().is_ok_and(|s| s.to_str().is_ok_and(|s| s == text))
}

/// The `("context",)` tuple C code passes: the C Task and Future pass the
/// same one on every call, and its str is not the interned one, so it is
/// remembered (and kept alive, so its address stays its own) once seen.
static C_CONTEXT_KWNAMES: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();

/// Whether the keyword names are just `("context",)`, the common case.
fn is_context_only(names: Borrowed<'_, '_, PyTuple>) -> bool {
    let py = names.py();
    if C_CONTEXT_KWNAMES.get(py).is_some_and(|t| t.is(names)) {
        return true;
    }
    if names.len() != 1 {
        return false;
    }
    let Ok(name) = names.get_borrowed_item(0) else { return false };
    if !is_keyword(&name, pyo3::intern!(py, "context"), "context") {
        return false;
    }
    if !name.is(pyo3::intern!(py, "context")) {
        C_CONTEXT_KWNAMES.get_or_init(py, || names.to_owned().unbind());
    }
    true
}

pub fn call_later(slf: &Bound<'_, LoopCore>, delay: Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>, context: Option<Bound<'_, PyAny>>) -> PyResult<Py<TimerHandle>> {
    reject_none(slf.get(), &delay, "delay must not be None")?;
    let (when, when_obj) = time_source::after(slf, &delay)?;
    // asyncio's call_later goes through call_at, whose name its checks report.
    schedule_at(slf, when, when_obj, callback, args, context)
}

pub fn call_at(slf: &Bound<'_, LoopCore>, when: Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>, context: Option<Bound<'_, PyAny>>) -> PyResult<Py<TimerHandle>> {
    reject_none(slf.get(), &when, "when cannot be None")?;
    let value = when.extract()?;
    // asyncio keeps the deadline as given (an int stays an int in `when()`).
    let when_obj = (!when.is_exact_instance_of::<PyFloat>()).then_some(when);
    schedule_at(slf, value, when_obj, callback, args, context)
}

/// An int deadline's exact value when its float is not exact (see [`Deadline`]).
fn big_int(secs: f64, obj: &Bound<'_, PyAny>) -> Option<i128> {
    const EXACT_LIMIT: f64 = 9_007_199_254_740_992.0; // 2**53
    (secs.abs() >= EXACT_LIMIT && obj.is_instance_of::<PyInt>()).then(|| obj.extract().ok()).flatten()
}

fn schedule_at(slf: &Bound<'_, LoopCore>, when: f64, when_obj: Option<Bound<'_, PyAny>>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>, context: Option<Bound<'_, PyAny>>) -> PyResult<Py<TimerHandle>> {
    let py = slf.py();
    let core = slf.get();
    core.check_closed()?;
    if core.debug() {
        LoopCore::debug_checks(slf, &callback, "call_at", true)?;
    }
    let deadline = Deadline { secs: when, big_int: when_obj.as_ref().and_then(|obj| big_int(when, obj)) };
    let timer = TimerHandle::new(deadline, when_obj.map(Bound::unbind));
    let init = PyClassInitializer::from(make_handle(slf, callback, args, context, true)?).add_subclass(timer);
    let timer = Py::new(py, init)?;
    pyhelpers::untrack(&timer);
    lock(&core.sched).timers.push(deadline, timer.clone_ref(py));
    Ok(timer)
}

/// asyncio's `create_task`: the common case (no task factory, no debug mode)
/// is done here, the rest by asyncio's own code (`_create_task_fallback`).
pub fn create_task<'py>(slf: &Bound<'py, LoopCore>, coro: Bound<'py, PyAny>, name: Option<Bound<'py, PyAny>>, context: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    let core = slf.get();
    core.check_closed()?;
    let name = name.filter(|n| !n.is_none());
    let context = context.filter(|c| !c.is_none());
    let plain = !core.debug() && (context.is_none() || core.py311_plus) && lock(&core.task_factory).is_none();
    if plain {
        return pyhelpers::new_task(slf.as_any(), &coro, name.as_ref(), context.as_ref());
    }
    let kwargs = PyDict::new(py);
    if let Some(name) = name {
        kwargs.set_item(pyo3::intern!(py, "name"), name)?;
    }
    if let Some(context) = context {
        kwargs.set_item(pyo3::intern!(py, "context"), context)?;
    }
    slf.call_method(pyo3::intern!(py, "_create_task_fallback"), (coro,), Some(&kwargs))
}

/// asyncio's `_add_callback`: queue an existing handle unless it is cancelled.
pub fn add_callback(core: &LoopCore, handle: Bound<'_, PyAny>) -> PyResult<()> {
    let entry = match handle.cast_into::<Handle>() {
        Ok(h) if h.get().is_cancelled() => return Ok(()),
        Ok(h) => Ready::Native(h.unbind()),
        Err(e) => {
            let handle = e.into_inner();
            if handle.getattr(pyo3::intern!(handle.py(), "_cancelled"))?.is_truthy()? {
                return Ok(());
            }
            Ready::Foreign(handle.unbind())
        }
    };
    let mut s = lock(&core.sched);
    s.foreign_queued += matches!(entry, Ready::Foreign(_)) as usize;
    s.ready.push_back(entry);
    Ok(())
}
