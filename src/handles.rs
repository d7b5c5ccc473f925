//! `Handle` and `TimerHandle`: what `call_soon`/`call_later` return and what
//! the ready queue holds. They mirror `asyncio.Handle`/`asyncio.TimerHandle`,
//! including the private attributes asyncio's own helpers read (`_callback`,
//! `_args`, `_cancelled`, `_source_traceback`, `_when`, ...).
//!
//! Handles are the most allocated objects of a running loop, so they are
//! taken off Python's cycle collector as soon as they are made ([`untrack`];
//! tracking showed up as a third of the time of `call_soon`). That is safe
//! because a handle never holds its loop strongly (it shares [`LoopShared`]
//! instead) and drops its callback once it has run, is cancelled, or the
//! loop is closed, so no cycle through a handle outlives its scheduling.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::class::basic::CompareOp;
use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::PyClass;
use pyo3::types::{PyFloat, PyTuple, PyWeakrefReference};

use crate::pyhelpers;

/// The loop state its handles need, shared without a Python reference.
pub struct LoopShared {
    pub debug: AtomicBool,
    /// asyncio's `_timer_cancelled_count`: cancelled timers still in the heap.
    pub timer_cancelled_count: AtomicUsize,
    /// A weak reference to the loop object, for `handle._loop`.
    loop_ref: PyOnceLock<Py<PyAny>>,
}

impl LoopShared {
    pub fn new() -> Arc<Self> {
        Arc::new(LoopShared { debug: AtomicBool::new(false), timer_cancelled_count: AtomicUsize::new(0), loop_ref: PyOnceLock::new() })
    }

    /// Remember the loop object (weakly) the first time a handle is made.
    pub fn bind_loop(&self, loop_obj: &Bound<'_, PyAny>) -> PyResult<()> {
        self.loop_ref
            .get_or_try_init(loop_obj.py(), || Ok::<_, PyErr>(PyWeakrefReference::new(loop_obj)?.into_any().unbind()))
            .map(drop)
    }

    fn loop_obj(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self.loop_ref.get(py) {
            Some(r) => Ok(r.bind(py).call0()?.unbind()),
            None => Ok(py.None()),
        }
    }
}

/// Take a new handle off the cycle collector's lists (see the module docs).
pub fn untrack<T: PyClass>(handle: &Py<T>) {
    // SAFETY: the object is alive (we hold a reference) and we are attached
    // to the interpreter. PyObject_GC_UnTrack is a no-op on an untracked
    // object, and PyO3's deallocator untracks through the same function, so
    // either state is fine for the object's whole life.
    unsafe { ffi::PyObject_GC_UnTrack(handle.as_ptr().cast()) };
}

/// The callable and its arguments; dropped on `cancel()` so a cancelled
/// handle keeps nothing alive, as in asyncio.
pub struct Callback {
    pub func: Py<PyAny>,
    pub args: Py<PyTuple>,
}

/// A scheduled callback. Instances come from a freelist; PyO3 does not
/// re-track reused ones, which matches [`untrack`] on fresh ones.
#[pyclass(module = "ferroloop", frozen, subclass, freelist = 4096)]
pub struct Handle {
    callback: Mutex<Option<Callback>>,
    context: Py<PyAny>,
    shared: Arc<LoopShared>,
    cancelled: AtomicBool,
    /// False for fd callbacks, which run each time their fd is ready.
    one_shot: bool,
    source_traceback: Option<Py<PyAny>>,
    /// Debug mode keeps the repr of a cancelled handle (asyncio's `_repr`).
    repr: Mutex<Option<Py<PyAny>>>,
}

impl Handle {
    pub fn new(func: Py<PyAny>, args: Py<PyTuple>, context: Py<PyAny>, shared: Arc<LoopShared>, one_shot: bool, source_traceback: Option<Py<PyAny>>) -> Self {
        Handle {
            callback: Mutex::new(Some(Callback { func, args })),
            context,
            shared,
            cancelled: AtomicBool::new(false),
            one_shot,
            source_traceback,
            repr: Mutex::new(None),
        }
    }

    /// Drop the callback of a handle that will not run again (one-shot
    /// handles after running, every handle when its loop closes).
    pub fn release(&self, all: bool) {
        if self.one_shot || all {
            drop(self.take_callback());
        }
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    fn take_callback(&self) -> Option<Callback> {
        self.callback.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn callback_refs(&self, py: Python<'_>) -> Option<(Py<PyAny>, Py<PyTuple>)> {
        let guard = self.callback.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|c| (c.func.clone_ref(py), c.args.clone_ref(py)))
    }

    /// Mark cancelled and release the callback. Returns false if it already was.
    pub fn cancel_inner(&self, slf: &Bound<'_, PyAny>) -> PyResult<bool> {
        if self.cancelled.swap(true, Ordering::Relaxed) {
            return Ok(false);
        }
        let py = slf.py();
        if self.shared.debug.load(Ordering::Relaxed) {
            let r = pyhelpers::handle_repr(py, slf)?;
            *self.repr.lock().unwrap_or_else(|e| e.into_inner()) = Some(r.unbind());
        }
        // Dropped outside the lock: a callback's finalizer may run Python code.
        let cb = self.take_callback();
        drop(cb);
        Ok(true)
    }

    /// Run the callback in its context. Exceptions other than SystemExit and
    /// KeyboardInterrupt go to the loop's exception handler, as in asyncio.
    /// `release` drops a one-shot callback right away (debug mode keeps it
    /// until the slow-callback check has formatted the handle).
    pub fn run(&self, slf: &Bound<'_, PyAny>, release: bool) -> PyResult<()> {
        let py = slf.py();
        let release = release && self.one_shot;
        let callback = if release { self.take_callback().map(|c| (c.func, c.args)) } else { self.callback_refs(py) };
        let Some((func, args)) = callback else { return Ok(()) };
        let ctx = self.context.bind(py);
        match with_context(py, ctx, || func.bind(py).call1(args.bind(py)).map(drop)) {
            Ok(()) => Ok(()),
            Err(err) if err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py) => Err(err),
            Err(err) => {
                // Reported while the handle still shows its callback, as in asyncio.
                if release {
                    *self.callback.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Callback { func: func.clone_ref(py), args: args.clone_ref(py) });
                }
                let reported = pyhelpers::report_callback_error(py, slf, func.bind(py), args.bind(py), err);
                if release {
                    self.release(false);
                }
                reported
            }
        }
    }
}

/// Run `f` with `ctx` entered as the current contextvars context, which is
/// what `Context.run` does without building an argument tuple.
fn with_context<T>(py: Python<'_>, ctx: &Bound<'_, PyAny>, f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    // SAFETY: PyContext_Enter/Exit are called with the GIL held on a live object
    // we hold a reference to; Enter type-checks it and reports errors via -1.
    if unsafe { ffi::PyContext_Enter(ctx.as_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    let out = f();
    // SAFETY: we entered this very context above on this thread, so Exit is balanced.
    if unsafe { ffi::PyContext_Exit(ctx.as_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    out
}

#[pymethods]
impl Handle {
    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().cancel_inner(slf.as_any()).map(drop)
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.context.clone_ref(py)
    }

    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().run(slf.as_any(), false)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.callback_refs(py).map(|(f, _)| f)
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.callback_refs(py).map(|(_, a)| a)
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> Py<PyAny> {
        self.context.clone_ref(py)
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.shared.loop_obj(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback.as_ref().map(|t| t.clone_ref(py))
    }

    #[getter]
    fn _repr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.repr.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|r| r.clone_ref(py))
    }

    fn __repr__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        if let Some(r) = slf.get()._repr(slf.py()) {
            return Ok(r.into_bound(slf.py()));
        }
        pyhelpers::handle_repr(slf.py(), slf.as_any())
    }
}

/// A handle scheduled for a deadline on the loop's clock.
#[pyclass(module = "ferroloop", frozen, extends = Handle, freelist = 4096)]
pub struct TimerHandle {
    when: f64,
    /// True while the timer sits in the loop's heap (asyncio's `_scheduled`).
    scheduled: AtomicBool,
}

impl TimerHandle {
    pub fn new(when: f64) -> Self {
        TimerHandle { when, scheduled: AtomicBool::new(true) }
    }

    #[inline]
    pub fn when_f64(&self) -> f64 {
        self.when
    }

    pub fn set_scheduled(&self, value: bool) {
        self.scheduled.store(value, Ordering::Relaxed);
    }
}

#[pymethods]
impl TimerHandle {
    fn when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }

    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let handle = slf.as_super().get();
        if !handle.is_cancelled() && slf.get().scheduled.load(Ordering::Relaxed) {
            handle.shared.timer_cancelled_count.fetch_add(1, Ordering::Relaxed);
        }
        handle.cancel_inner(slf.as_any()).map(drop)
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        PyFloat::new(py, self.when).hash()
    }

    fn __richcmp__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (slf.get().when, other.get().when);
        let result = match op {
            CompareOp::Lt => a < b,
            CompareOp::Le => a < b || slf.as_any().eq(other.as_any())?,
            CompareOp::Gt => a > b,
            CompareOp::Ge => a > b || slf.as_any().eq(other.as_any())?,
            CompareOp::Eq | CompareOp::Ne => {
                let (h1, h2) = (slf.as_super().get(), other.as_super().get());
                let same = slf.is(other)
                    || (a == b
                        && h1.is_cancelled() == h2.is_cancelled()
                        && match (h1.callback_refs(py), h2.callback_refs(py)) {
                            (Some((f1, a1)), Some((f2, a2))) => f1.bind(py).eq(f2.bind(py))? && a1.bind(py).eq(a2.bind(py))?,
                            (None, None) => true,
                            _ => false,
                        });
                if matches!(op, CompareOp::Eq) { same } else { !same }
            }
        };
        Ok(pyo3::types::PyBool::new(py, result).to_owned().into_any().unbind())
    }
}
