//! Calls from Rust into the package's Python helpers (`ferroloop/_handles.py`)
//! for the cold paths that are asyncio formatting and logging, plus small
//! FFI wrappers the hot paths share.

use std::ffi::CStr;
use std::sync::atomic::{AtomicU32, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};


static HELPERS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn helpers(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    HELPERS
        .get_or_try_init(py, || Ok::<_, PyErr>(py.import("ferroloop._handles")?.unbind()))
        .map(|m| m.bind(py))
}

static FUTURE_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static TASKS_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
/// Keyword names for the calls below, built once.
static KWNAMES: PyOnceLock<[Py<PyTuple>; 4]> = PyOnceLock::new();

/// `callable(*positional, **dict(zip(kwnames, keywords)))` by vectorcall:
/// no kwargs dict is built for these per-future and per-task calls.
fn call_with_keywords<'py>(callable: &Bound<'py, PyAny>, positional: &[&Bound<'py, PyAny>], kwnames: &Bound<'py, PyTuple>, keywords: &[&Bound<'py, PyAny>]) -> PyResult<Bound<'py, PyAny>> {
    debug_assert_eq!(kwnames.len(), keywords.len());
    let mut args = [std::ptr::null_mut::<ffi::PyObject>(); 4];
    let n = positional.len() + keywords.len();
    assert!(n <= args.len(), "call_with_keywords takes at most 4 arguments");
    for (slot, arg) in args.iter_mut().zip(positional.iter().chain(keywords)) {
        *slot = arg.as_ptr();
    }
    // SAFETY: every pointer is a borrowed reference the caller keeps alive
    // for the duration of the call; `kwnames` is a tuple of str matching the
    // trailing `keywords`; the result is a new reference or NULL with an
    // exception set.
    unsafe {
        let result = ffi::PyObject_Vectorcall(callable.as_ptr(), args.as_ptr(), positional.len(), kwnames.as_ptr());
        Bound::from_owned_ptr_or_err(callable.py(), result)
    }
}

fn kwnames(py: Python<'_>, name: bool, context: bool) -> PyResult<&Bound<'_, PyTuple>> {
    let all = KWNAMES.get_or_try_init(py, || {
        let t = |names: &[&str]| PyTuple::new(py, names).map(Bound::unbind);
        Ok::<_, PyErr>([t(&["loop"])?, t(&["loop", "name"])?, t(&["loop", "context"])?, t(&["loop", "name", "context"])?])
    })?;
    Ok(all[name as usize + 2 * context as usize].bind(py))
}

/// `asyncio.Future(**loop_kwargs)`, the C-accelerated future bound to our
/// loop: `loop_kwargs` is `{'loop': loop}`, which the loop keeps. The type's
/// `__new__` and `__init__` slots are called as `type(...)` calls them, but
/// with that dict instead of one made for each call (`__init__` only reads
/// its keyword arguments; a Python one gets a copy).
pub fn new_future<'py>(loop_kwargs: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyAny>> {
    let py = loop_kwargs.py();
    let future_type = FUTURE_TYPE.get_or_try_init(py, || Ok::<_, PyErr>(py.import("asyncio")?.getattr("Future")?.cast_into::<PyType>()?.unbind()))?;
    let type_ptr = future_type.as_ptr().cast::<ffi::PyTypeObject>();
    let args = PyTuple::empty(py);
    // SAFETY: a live type object, whose full struct is readable (not built
    // for the limited API); its slots take borrowed (type or object, args
    // tuple, kwargs dict) and return a new reference / 0, or NULL / -1 with
    // an exception set. `__init__` runs only on what `__new__` made of this
    // very type, as `type.__call__` does.
    unsafe {
        let (Some(new), Some(init)) = ((*type_ptr).tp_new, (*type_ptr).tp_init) else {
            return future_type.bind(py).call((), Some(loop_kwargs));
        };
        let future = Bound::from_owned_ptr_or_err(py, new(type_ptr, args.as_ptr(), loop_kwargs.as_ptr()))?;
        if ffi::Py_TYPE(future.as_ptr()) == type_ptr && init(future.as_ptr(), args.as_ptr(), loop_kwargs.as_ptr()) < 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(future)
    }
}

/// `asyncio.tasks.Task(coro, loop=loop, name=name[, context=context])`,
/// looked up on each call as asyncio's `create_task` does.
pub fn new_task<'py>(loop_obj: &Bound<'py, PyAny>, coro: &Bound<'py, PyAny>, name: Option<&Bound<'py, PyAny>>, context: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let py = loop_obj.py();
    let tasks = TASKS_MODULE.get_or_try_init(py, || Ok::<_, PyErr>(py.import("asyncio.tasks")?.unbind()))?;
    let task_type = tasks.bind(py).getattr(pyo3::intern!(py, "Task"))?;
    let kwnames = kwnames(py, name.is_some(), context.is_some())?;
    match (name, context) {
        (None, None) => call_with_keywords(&task_type, &[coro], kwnames, &[loop_obj]),
        (Some(n), None) | (None, Some(n)) => call_with_keywords(&task_type, &[coro], kwnames, &[loop_obj, n]),
        (Some(n), Some(c)) => call_with_keywords(&task_type, &[coro], kwnames, &[loop_obj, n, c]),
    }
}

/// A tuple of the borrowed objects `items` (the empty-tuple singleton for none).
pub fn tuple_from_slice<'py>(py: Python<'py>, items: &[*mut ffi::PyObject]) -> PyResult<Bound<'py, PyTuple>> {
    if items.is_empty() {
        return Ok(PyTuple::empty(py));
    }
    // SAFETY: attached; PyTuple_New returns a new tuple or NULL with an
    // exception set; each slot is filled once with a new reference to a
    // live object the caller lends us.
    unsafe {
        let tuple = Bound::from_owned_ptr_or_err(py, ffi::PyTuple_New(items.len() as ffi::Py_ssize_t))?;
        for (i, &item) in items.iter().enumerate() {
            ffi::Py_INCREF(item);
            ffi::PyTuple_SET_ITEM(tuple.as_ptr(), i as ffi::Py_ssize_t, item);
        }
        Ok(tuple.cast_into_unchecked())
    }
}

/// `run()`, a Rust panic in it turned into a PanicException (as PyO3's own
/// entry points turn it): for code CPython calls without PyO3 in between,
/// so that nothing unwinds into Python.
pub fn catching_panics<T>(run: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|panic| Err(panic_to_pyerr(panic)))
}

/// What a C function CPython calls returns for `result`: a new reference,
/// or NULL with the exception set.
pub fn into_c_result(py: Python<'_>, result: PyResult<Py<PyAny>>) -> *mut ffi::PyObject {
    match result {
        Ok(object) => object.into_ptr(),
        Err(e) => {
            e.restore(py);
            std::ptr::null_mut()
        }
    }
}

/// The PanicException a caught Rust panic raises, worded as PyO3 words it.
#[cold]
pub fn panic_to_pyerr(payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let message = match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&str>() {
            Ok(s) => s.to_string(),
            Err(_) => "panic from Rust code".to_owned(),
        },
    };
    pyo3::panic::PanicException::new_err((message,))
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
pub fn report_callback_error(py: Python<'_>, handle: &Bound<'_, PyAny>, func: &Bound<'_, PyAny>, args: &Bound<'_, PyAny>, err: PyErr) -> PyResult<()> {
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

/// `f(memoryview(data))`: Rust-owned bytes lent to Python without a copy.
/// If the callee kept a reference to the view, it is released before we
/// return, so no view can reach `data` afterwards.
pub fn with_readonly_view<T>(py: Python<'_>, data: &[u8], f: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<T>) -> PyResult<T> {
    // SAFETY: `data` is borrowed for this whole function, the view is
    // read-only and is released (or freed) before the borrow ends.
    let view = unsafe {
        let ptr = ffi::PyMemoryView_FromMemory(data.as_ptr().cast_mut().cast(), data.len() as ffi::Py_ssize_t, ffi::PyBUF_READ);
        Bound::from_owned_ptr_or_err(py, ptr)?
    };
    let result = f(&view);
    // SAFETY: reading the reference count of a live object we hold.
    if unsafe { ffi::Py_REFCNT(view.as_ptr()) } > 1 {
        view.call_method0(pyo3::intern!(py, "release"))?;
    }
    result
}

/// `descriptor.__get__(obj)` through the type's slot, as attribute lookup
/// calls it: without the method-wrapper and argument tuple of a call to
/// `__get__`, which cost a microsecond per accepted connection
/// (`socket_io::socket_kind`).
pub fn descriptor_get<'py>(descriptor: &Bound<'py, PyAny>, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    // SAFETY: reading the slot of a live type object; not built for the
    // limited API, so the type struct is the full one.
    let get = unsafe { (*ffi::Py_TYPE(descriptor.as_ptr())).tp_descr_get };
    let Some(get) = get else { return descriptor.call_method1(pyo3::intern!(py, "__get__"), (obj,)) };
    // SAFETY: tp_descr_get takes borrowed (descriptor, obj, type) and returns
    // a new reference, or NULL with an exception set (a member or getset
    // descriptor raises TypeError for an object of another type).
    unsafe { Bound::from_owned_ptr_or_err(py, get(descriptor.as_ptr(), obj.as_ptr(), ffi::Py_TYPE(obj.as_ptr()).cast())) }
}

/// `descriptor.__set__(obj, value)` through the type's slot, as attribute
/// assignment calls it (for a slot of `__slots__`: a store at its offset).
pub fn descriptor_set(descriptor: &Bound<'_, PyAny>, obj: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = obj.py();
    // SAFETY: as in descriptor_get.
    let set = unsafe { (*ffi::Py_TYPE(descriptor.as_ptr())).tp_descr_set };
    let Some(set) = set else { return descriptor.call_method1(pyo3::intern!(py, "__set__"), (obj, value)).map(drop) };
    // SAFETY: tp_descr_set takes borrowed (descriptor, obj, value) and
    // returns 0, or -1 with an exception set.
    if unsafe { set(descriptor.as_ptr(), obj.as_ptr(), value.as_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    Ok(())
}

/// A `PyMethodDef` that may be a `static`: a method descriptor keeps a
/// pointer to its def for as long as it lives.
pub struct StaticMethodDef(ffi::PyMethodDef);

// SAFETY: never written after it is made; CPython only reads it, from
// threads that hold the GIL.
unsafe impl Sync for StaticMethodDef {}

impl StaticMethodDef {
    /// A method taking no argument (METH_NOARGS).
    pub const fn noargs(name: &'static CStr, function: ffi::PyCFunction) -> Self {
        StaticMethodDef(ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer { PyCFunction: function },
            ml_flags: ffi::METH_NOARGS,
            ml_doc: std::ptr::null(),
        })
    }

    /// A method taking vectorcall arguments (METH_FASTCALL | METH_KEYWORDS).
    pub const fn fastcall_keywords(name: &'static CStr, function: ffi::PyCFunctionFastWithKeywords) -> Self {
        StaticMethodDef(ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: function },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: std::ptr::null(),
        })
    }

    /// Where the def is, which a method bound from it points to.
    pub fn address(&self) -> usize {
        (&raw const self.0) as usize
    }

    pub fn name(&self) -> &str {
        // SAFETY: made from a `&'static CStr` of a Rust string literal.
        unsafe { CStr::from_ptr(self.0.ml_name) }.to_str().unwrap_or("")
    }
}

/// A method descriptor of `class` (what a C type's method is on its
/// class): called on an instance, CPython passes it to the def's function.
pub fn method_descriptor<'py>(class: &Bound<'py, PyType>, def: &'static StaticMethodDef) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: `class` is a live type object; the def is a static, so it
    // outlives the descriptor, which only reads it.
    unsafe { Bound::from_owned_ptr_or_err(class.py(), ffi::PyDescr_NewMethod(class.as_ptr().cast(), (&raw const def.0).cast_mut())) }
}

/// Whether the object has the cycle collector's header (PyObject_IS_GC's
/// test: its type's GC flag, and `tp_is_gc` for the types whose instances
/// differ), which the collector's tracking functions read.
fn has_gc_header(ptr: *mut ffi::PyObject) -> bool {
    // SAFETY: callers pass a live object and are attached; a type object's
    // fields are readable (not built for the limited API).
    unsafe {
        let type_ = ffi::Py_TYPE(ptr);
        ffi::PyType_IS_GC(type_) != 0 && (*type_).tp_is_gc.is_none_or(|is_gc| is_gc(ptr) != 0)
    }
}

/// Whether the cycle collector tracks the object.
fn is_tracked(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: live object, attached; checked to have the header first.
    has_gc_header(obj.as_ptr()) && unsafe { ffi::PyObject_GC_IsTracked(obj.as_ptr()) } != 0
}

/// Takes an object off the cycle collector's lists: for one that can be in
/// no reference cycle (for as long as that holds), which is then freed by
/// its reference count alone. An object the collector does not track is
/// left as it is.
#[inline]
pub fn untrack<T>(obj: &Py<T>) {
    let ptr = obj.as_ptr();
    if has_gc_header(ptr) {
        // SAFETY: live object with the header, attached; untracking an
        // untracked object does nothing.
        unsafe { ffi::PyObject_GC_UnTrack(ptr.cast()) }
    }
}

/// Puts an object that [`untrack`] took off the collector's lists back on
/// them, for when it may be in a cycle again.
pub fn track_again<T>(obj: &Bound<'_, T>) {
    if !is_tracked(obj.as_any()) && has_gc_header(obj.as_ptr()) {
        // SAFETY: live, untracked, with the header: PyObject_GC_Track's
        // requirements.
        unsafe { ffi::PyObject_GC_Track(obj.as_ptr().cast()) }
    }
}

/// `type_.__new__(type_)` by the type's slot, as `type_()` starts (then
/// calls `__init__`), for a type whose `__new__` takes no arguments (as
/// `object`'s and `_socket.socket`'s); `Type.__new__(Type)` in Python
/// would first check that the call is safe, for several times the cost.
pub fn new_object<'py>(type_: &Bound<'py, PyType>) -> PyResult<Bound<'py, PyAny>> {
    new_object_as(type_, type_, &PyTuple::empty(type_.py()))
}

/// `base.__new__(subtype, *args)` by `base`'s slot: for a subtype whose own
/// `__new__` is Python code that only calls this one (weakref's KeyedRef).
pub fn new_object_as<'py>(base: &Bound<'py, PyType>, subtype: &Bound<'py, PyType>, args: &Bound<'py, PyTuple>) -> PyResult<Bound<'py, PyAny>> {
    let py = base.py();
    if !subtype.is_subclass(base)? {
        return Err(pyo3::exceptions::PyTypeError::new_err("new_object_as: not a subtype"));
    }
    let base_ptr = base.as_ptr().cast::<ffi::PyTypeObject>();
    // SAFETY: `base` is a live type object (a `PyType`), whose full
    // struct is readable: this module is not built for the limited API.
    let Some(tp_new) = (unsafe { (*base_ptr).tp_new }) else {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!("cannot create '{}' instances", base.name()?)));
    };
    // SAFETY: tp_new's contract: a subtype of the slot's owner (checked
    // above), an argument tuple and NULL keywords, all borrowed; it returns
    // a new reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, tp_new(subtype.as_ptr().cast(), args.as_ptr(), std::ptr::null_mut())) }
}

/// Whether some of a type's methods are still the ones captured when
/// ferroloop was imported (a test may replace one for a while), looked up
/// again only when the type has changed. CPython gives a type a new version
/// tag whenever it or a base class changes (an attribute set or deleted,
/// `__bases__` assigned) and never gives a tag out twice; its own attribute
/// caches rely on the same. So the methods are looked up only when the tag
/// differs from the one they were last found unchanged at.
pub struct UnchangedMethods(AtomicU32);

impl Default for UnchangedMethods {
    fn default() -> Self {
        Self::new()
    }
}

impl UnchangedMethods {
    pub const fn new() -> Self {
        UnchangedMethods(AtomicU32::new(0))
    }

    /// Whether each `type_.<name>` is still its `original`.
    pub fn hold(&self, type_: &Bound<'_, PyType>, methods: &[(&Bound<'_, PyString>, &Py<PyAny>)]) -> PyResult<bool> {
        let tag = version_tag(type_);
        if tag != 0 && tag == self.0.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let py = type_.py();
        let mut hold = true;
        for (name, original) in methods {
            if !type_.getattr(*name)?.is(original.bind(py)) {
                hold = false;
                break;
            }
        }
        // (read again: the lookups give a type without one a tag)
        self.0.store(if hold { version_tag(type_) } else { 0 }, Ordering::Relaxed);
        Ok(hold)
    }
}

/// The type's version tag; 0 while it has none.
fn version_tag(type_: &Bound<'_, PyType>) -> u32 {
    // SAFETY: reading a field of a live type object; not built for the
    // limited API, so the type struct is the full one.
    unsafe { (*type_.as_type_ptr()).tp_version_tag }
}
