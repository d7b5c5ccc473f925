//! `Handle` and `TimerHandle`: what `call_soon`/`call_later` return and what
//! the ready queue holds. They mirror `asyncio.Handle`/`asyncio.TimerHandle`,
//! including the private attributes asyncio's own helpers read (`_callback`,
//! `_args`, `_cancelled`, `_source_traceback`, `_when`, ...).
//!
//! Handles are the most allocated objects of a running loop, so they are
//! taken off Python's cycle collector as soon as they are made
//! ([`pyhelpers::untrack`]; PyO3's deallocator untracks through the same
//! function, so either state is fine for a handle's whole life;
//! tracking showed up as a third of the time of `call_soon`). That is safe
//! because a handle never holds its loop strongly (it shares [`LoopShared`]
//! instead) and drops its callback once it has run, is cancelled, or the
//! loop is closed, so no cycle through a handle outlives its scheduling.
//!
//! A `call_soon` handle that has run and that nothing references any more
//! is not deallocated but kept for the next `call_soon` of its thread
//! ([`SPARE`]): refilling it costs a fraction of PyO3's deallocation and
//! allocation of a pyclass object.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::class::basic::CompareOp;
use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyFloat, PyTuple, PyWeakrefReference};

use crate::native_callbacks;
use crate::pyhelpers;
use crate::timer_heap::Deadline;

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

/// The callable and its arguments; dropped on `cancel()` so a cancelled
/// handle keeps nothing alive, as in asyncio.
pub struct Callback {
    pub func: Py<PyAny>,
    pub args: Py<PyTuple>,
}

/// What a handle runs and in which context, under one lock: a recycled
/// handle (see [`SPARE`]) gets new ones.
struct State {
    callback: Option<Callback>,
    context: Py<PyAny>,
}

/// A scheduled callback. Instances come from a freelist; PyO3 does not
/// re-track reused ones, which matches [`untrack`](crate::pyhelpers::untrack) on fresh ones. The
/// freelist is sized for what another thread's `call_soon_threadsafe` makes
/// in one GIL switch interval (some 15-30k handles in the default 5 ms): a
/// handle it cannot serve costs a malloc and counts towards the next cycle
/// collection, which made the producer thread of that benchmark ~25% slower.
#[pyclass(module = "ferroloop", frozen, subclass, weakref, freelist = 32768)]
pub struct Handle {
    state: Mutex<State>,
    shared: Arc<LoopShared>,
    cancelled: AtomicBool,
    /// False for fd callbacks, which run each time their fd is ready.
    one_shot: bool,
    source_traceback: Option<Py<PyAny>>,
    /// Debug mode keeps the repr of a cancelled handle (asyncio's `_repr`).
    repr: Mutex<Option<Py<PyAny>>>,
}

/// How many handles each thread keeps for reuse.
const SPARE_HANDLES: usize = 1024;

thread_local! {
    /// One-shot handles of this thread's loop that have run and that
    /// nothing else references (so nothing can tell they live on), with no
    /// callback and `None` for a context, kept for `call_soon` to refill.
    /// Per thread, so taking and keeping them needs no lock; those left when
    /// the thread ends (detached by then) are freed through PyO3's pool of
    /// deferred decrefs.
    static SPARE: RefCell<Vec<Py<Handle>>> = const { RefCell::new(Vec::new()) };
}

impl Handle {
    pub fn new(func: Py<PyAny>, args: Py<PyTuple>, context: Py<PyAny>, shared: Arc<LoopShared>, one_shot: bool, source_traceback: Option<Py<PyAny>>) -> Self {
        Handle {
            state: Mutex::new(State { callback: Some(Callback { func, args }), context }),
            shared,
            cancelled: AtomicBool::new(false),
            one_shot,
            source_traceback,
            repr: Mutex::new(None),
        }
    }

    /// A one-shot handle (`call_soon`'s), recycled if this thread has a
    /// spare one of the same loop.
    pub fn new_one_shot(py: Python<'_>, callback: Callback, context: Py<PyAny>, shared: &Arc<LoopShared>, source_traceback: Option<Py<PyAny>>) -> PyResult<Py<Handle>> {
        if source_traceback.is_none() {
            if let Some(handle) = take_spare(py, shared) {
                // A spare has no callback, and `None` for a context. (Bounds
                // are dropped here: at once, on any thread; see `fastcall`.)
                let previous = std::mem::replace(&mut *handle.get().state(), State { callback: Some(callback), context });
                drop(previous.context.into_bound(py));
                return Ok(handle);
            }
        }
        let handle = Py::new(py, Handle::new(callback.func, callback.args, context, shared.clone(), true, source_traceback))?;
        pyhelpers::untrack(&handle);
        Ok(handle)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
        self.state().callback.take()
    }

    fn callback_refs(&self, py: Python<'_>) -> Option<(Py<PyAny>, Py<PyTuple>)> {
        self.state().callback.as_ref().map(|c| (c.func.clone_ref(py), c.args.clone_ref(py)))
    }

    fn context(&self, py: Python<'_>) -> Py<PyAny> {
        self.state().context.clone_ref(py)
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
    /// until the slow-callback check has formatted the handle); the caller
    /// must then own `slf`'s reference, taken off the ready queue, as a
    /// handle left with no other reference is kept for reuse ([`SPARE`]).
    pub fn run(&self, slf: &Bound<'_, PyAny>, release: bool) -> PyResult<()> {
        let py = slf.py();
        let release = release && self.one_shot;
        // The handle shows its callback while it runs, as asyncio's does; a
        // one-shot handle drops it once it has run.
        let Some((func, args)) = self.callback_refs(py) else { return Ok(()) };
        let (func, args, ctx) = (func.into_bound(py), args.into_bound(py), self.context(py).into_bound(py));
        // SAFETY: a type check of a live object, with the GIL held.
        let result = if unsafe { ffi::PyContext_CheckExact(ctx.as_ptr()) } != 0 {
            with_context(py, &ctx, || native_callbacks::call(&func, &args).unwrap_or_else(|| func.call1(&args).map(drop)))
        } else {
            // Not a Context: what asyncio's `self._context.run(...)` does with it.
            let mut call = vec![func.clone()];
            call.extend(args.iter());
            ctx.getattr(pyo3::intern!(py, "run")).and_then(|run| run.call1(PyTuple::new(py, call)?)).map(drop)
        };
        drop((func, args, ctx));
        match result {
            Ok(()) => {
                if release {
                    self.release(false);
                    self.recycle(slf);
                }
                Ok(())
            }
            Err(err) if err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py) => {
                if release {
                    self.release(false);
                }
                Err(err)
            }
            Err(err) => {
                // Reported with what the handle shows now: None() if the
                // callback cancelled its own handle, as in asyncio.
                let (func, args) = self.callback_refs(py).map_or_else(|| (py.None(), py.None()), |(f, a)| (f, a.into_any()));
                let (func, args) = (func.into_bound(py), args.into_bound(py));
                let reported = pyhelpers::report_callback_error(py, slf, &func, &args, err);
                if release {
                    self.release(false);
                }
                reported
            }
        }
    }

    /// Keep a one-shot handle that has run for reuse, if nothing can tell:
    /// the caller's reference (the ready queue's) is the only one left, and
    /// it is a plain, uncancelled handle without debug information.
    fn recycle(&self, slf: &Bound<'_, PyAny>) {
        // SAFETY: `slf` is alive; reading a reference count has no other precondition.
        let only_reference = unsafe { ffi::Py_REFCNT(slf.as_ptr()) } == 1;
        if !only_reference || self.is_cancelled() || self.source_traceback.is_some() || has_weakrefs(slf) {
            return;
        }
        let Ok(handle) = slf.cast_exact::<Handle>() else { return };
        let kept = SPARE
            .try_with(|spare| match spare.try_borrow_mut() {
                Ok(mut spare) if spare.len() < SPARE_HANDLES => {
                    spare.push(handle.clone().unbind());
                    true
                }
                _ => false,
            })
            .unwrap_or(false);
        if kept {
            // The context goes now, as it would with the handle (after the
            // push: its finalizers may run code that takes a spare handle).
            let context = std::mem::replace(&mut self.state().context, slf.py().None());
            drop(context.into_bound(slf.py()));
        }
    }
}

/// Whether a weak reference to `handle` is alive: then it must die with
/// this handle, which is not recycled.
fn has_weakrefs(handle: &Bound<'_, PyAny>) -> bool {
    let obj = handle.as_ptr();
    // SAFETY: `handle` is alive and of a `weakref` class, so its type's
    // tp_weaklistoffset is the offset of the slot holding the head of its
    // weak-reference list (NULL when there is none); we only read it.
    unsafe {
        let offset = (*ffi::Py_TYPE(obj)).tp_weaklistoffset;
        offset > 0 && !(*obj.cast::<u8>().offset(offset).cast::<*mut ffi::PyObject>()).is_null()
    }
}

/// A spare handle of the loop `shared` belongs to, if this thread has one.
fn take_spare(py: Python<'_>, shared: &Arc<LoopShared>) -> Option<Py<Handle>> {
    let mut stale = Vec::<Py<Handle>>::new();
    let handle = SPARE
        .try_with(|spare| {
            let mut spare = spare.try_borrow_mut().ok()?;
            match spare.last() {
                Some(h) if Arc::ptr_eq(&h.get().shared, shared) => spare.pop(),
                // Spares of a loop this thread ran before: let them all go.
                Some(_) => {
                    stale = std::mem::take(&mut *spare);
                    None
                }
                None => None,
            }
        })
        .ok()
        .flatten();
    stale.into_iter().for_each(|h| drop(h.into_bound(py)));
    handle
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
        self.context(py)
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
        self.context(py)
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
    /// The deadline the heap orders by.
    when: Deadline,
    /// The deadline as given when it was not a float (`call_at(int)`):
    /// asyncio's `when()` returns the value it was given.
    when_obj: Option<Py<PyAny>>,
    /// True while the timer sits in the loop's heap (asyncio's `_scheduled`).
    scheduled: AtomicBool,
}

impl TimerHandle {
    pub fn new(when: Deadline, when_obj: Option<Py<PyAny>>) -> Self {
        TimerHandle { when, when_obj, scheduled: AtomicBool::new(true) }
    }

    fn when_value(&self, py: Python<'_>) -> Py<PyAny> {
        match &self.when_obj {
            Some(obj) => obj.clone_ref(py),
            None => PyFloat::new(py, self.when.secs).into_any().unbind(),
        }
    }

    #[inline]
    pub fn when_f64(&self) -> f64 {
        self.when.secs
    }

    pub fn set_scheduled(&self, value: bool) {
        self.scheduled.store(value, Ordering::Relaxed);
    }
}

#[pymethods]
impl TimerHandle {
    fn when(&self, py: Python<'_>) -> Py<PyAny> {
        self.when_value(py)
    }

    #[getter]
    fn _when(&self, py: Python<'_>) -> Py<PyAny> {
        self.when_value(py)
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
        self.when_value(py).bind(py).hash()
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
