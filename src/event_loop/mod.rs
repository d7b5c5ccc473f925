//! The loop core: ready queue, timers, fd callbacks and the run loop.
//!
//! `LoopCore` (`_ferroloop.BaseEventLoop` in Python) is the Rust base class
//! of `ferroloop.Loop`. This file holds its state and the `#[pymethods]`
//! table, which stays thin: each method checks
//! its arguments the way asyncio does and calls into
//! - [`scheduling`]: `call_soon`/`call_later`/`call_at`/`call_soon_threadsafe`, `create_task`,
//! - [`run`]: one iteration of the loop (`_run_once`),
//! - [`fd_callbacks`]: `add_reader`/`add_writer` and their removal,
//! - [`time_source`]: the clock the scheduler reads (`self.time()` when replaced).

mod fd_callbacks;
mod run;
mod scheduling;
mod time_source;

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mio::Waker;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyString, PyTuple};

use crate::clock;
use crate::handles::{Handle, LoopShared, TimerHandle};
use crate::poller::Poller;
use crate::timer_heap::TimerHeap;

pub use fd_callbacks::FdTable;

/// An entry of the ready queue: our own handle, or any object with asyncio's
/// `_run()`/`_cancelled` protocol (asyncio.Handle from borrowed stdlib code).
pub enum Ready {
    Native(Py<Handle>),
    Foreign(Py<PyAny>),
}

/// Ready queue and timers, behind one lock that is never held while Python runs.
#[derive(Default)]
pub struct Scheduler {
    pub ready: VecDeque<Ready>,
    pub timers: TimerHeap<Py<TimerHandle>>,
    /// While true the loop is (about to be) blocked in poll and another
    /// thread that adds work must wake it.
    pub polling: bool,
    /// A wake-up was sent during this poll: later threadsafe calls need not
    /// send another (one eventfd write per sleep, not one per call).
    pub wake_sent: bool,
    /// How many `Ready::Foreign` entries `ready` holds (for GC traversal).
    pub foreign_queued: usize,
}

impl Scheduler {
    /// Empty the ready queue and the timer heap (loop close, GC clear); the
    /// caller drops what it gets once no lock is held.
    pub fn take_all(&mut self) -> (VecDeque<Ready>, Vec<crate::timer_heap::Entry<Py<TimerHandle>>>) {
        self.foreign_queued = 0;
        (std::mem::take(&mut self.ready), self.timers.take_all())
    }

    /// Called after adding work from another thread: true if the loop sleeps
    /// in poll and this caller is the one to wake it.
    pub fn claim_wake(&mut self) -> bool {
        let wake = self.polling && !self.wake_sent;
        self.wake_sent |= wake;
        wake
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Named `BaseEventLoop` in Python, like the asyncio class that defines
/// these methods, so argument errors read the same ("BaseEventLoop.call_soon()
/// missing 1 required positional argument: 'callback'").
#[pyclass(name = "BaseEventLoop", module = "ferroloop._ferroloop", subclass, frozen)]
pub struct LoopCore {
    sched: Mutex<Scheduler>,
    poller: Mutex<Option<Poller>>,
    /// Wakes a loop blocked in poll from another thread; dropped on close.
    waker: Mutex<Option<Waker>>,
    fds: Mutex<FdTable>,
    /// Debug flag and cancelled-timer count, shared with the handles.
    shared: Arc<LoopShared>,
    closed: AtomicBool,
    stopping: AtomicBool,
    /// `threading.get_ident()` of the thread running the loop, 0 when not running.
    thread_id: AtomicU64,
    /// As assigned (asyncio keeps any object; only debug mode compares it);
    /// `None` is the default, 0.1.
    slow_callback_duration: Mutex<Option<Py<PyAny>>>,
    current_handle: Mutex<Option<Py<PyAny>>>,
    /// `_task_factory`, read by every `create_task`.
    task_factory: Mutex<Option<Py<PyAny>>>,
    clock_resolution: f64,
    /// Python 3.11+: rejects `None` delays/deadlines with its own message,
    /// and tasks take a `context`.
    py311_plus: bool,
    /// `time` is replaced on the instance or the class: the scheduler calls
    /// it instead of reading the clock (see `time_source`).
    python_time: AtomicBool,
    /// What `set_debug` was given when it was not a bool (asyncio keeps the
    /// value and `get_debug()` returns it); the flag itself is in `shared`.
    debug_value: Mutex<Option<Py<PyAny>>>,
    /// `{'loop': self}`, which every future the loop makes is initialised
    /// with (`pyhelpers::new_future`), made once.
    future_kwargs: Mutex<Option<Py<PyAny>>>,
}

impl LoopCore {
    #[inline]
    pub fn debug(&self) -> bool {
        self.shared.debug.load(Ordering::Relaxed)
    }

    pub fn has_task_factory(&self) -> bool {
        lock(&self.task_factory).is_some()
    }

    fn slow_callback_duration(&self, py: Python<'_>) -> Py<PyAny> {
        match lock(&self.slow_callback_duration).as_ref() {
            Some(value) => value.clone_ref(py),
            None => PyFloat::new(py, 0.1).into_any().unbind(),
        }
    }

    /// `self._debug` as set: the bool, or the object `set_debug` was given.
    fn debug_value(&self, py: Python<'_>) -> Py<PyAny> {
        match lock(&self.debug_value).as_ref() {
            Some(value) => value.clone_ref(py),
            None => PyBool::new(py, self.debug()).to_owned().into_any().unbind(),
        }
    }

    #[inline]
    fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        }
        Ok(())
    }

    fn check_thread(&self) -> PyResult<()> {
        let tid = self.thread_id.load(Ordering::Relaxed);
        if tid != 0 && tid != crate::pyhelpers::thread_ident() {
            return Err(PyRuntimeError::new_err(
                "Non-thread-safe operation invoked on an event loop other than the current one",
            ));
        }
        Ok(())
    }

    /// Debug-mode checks shared by the scheduling methods (asyncio's
    /// `_check_thread` + `_check_callback`).
    fn debug_checks(slf: &Bound<'_, Self>, callback: &Bound<'_, PyAny>, method: &str, check_thread: bool) -> PyResult<()> {
        if check_thread {
            slf.get().check_thread()?;
        }
        slf.call_method1(pyo3::intern!(slf.py(), "_check_callback"), (callback, method))?;
        Ok(())
    }

    /// Wake the loop if it sleeps in poll and nobody has woken it yet.
    fn wake_if_polling(&self) {
        if lock(&self.sched).claim_wake() {
            self.wake();
        }
    }

    fn wake(&self) {
        // A full eventfd or a closed loop is not worth reporting: the loop
        // is either already awake or gone.
        if let Some(waker) = lock(&self.waker).as_ref() {
            let _ = waker.wake();
        }
    }
}

#[pymethods]
impl LoopCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(py: Python<'_>, _args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let (poller, registrar, waker) = Poller::new()?;
        Ok(LoopCore {
            sched: Mutex::new(Scheduler::default()),
            poller: Mutex::new(Some(poller)),
            waker: Mutex::new(Some(waker)),
            fds: Mutex::new(FdTable::new(registrar)),
            shared: LoopShared::new(),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            thread_id: AtomicU64::new(0),
            slow_callback_duration: Mutex::new(None),
            current_handle: Mutex::new(None),
            task_factory: Mutex::new(None),
            clock_resolution: clock::resolution(),
            py311_plus: py.version_info() >= (3, 11),
            python_time: AtomicBool::new(false),
            debug_value: Mutex::new(None),
            future_kwargs: Mutex::new(None),
        })
    }

    /// Called once by `Loop.__init__`: a subclass may have its own `time`.
    fn _refresh_time_source(slf: &Bound<'_, Self>) -> PyResult<()> {
        time_source::refresh(slf, false)
    }

    fn __setattr__(slf: &Bound<'_, Self>, name: &Bound<'_, PyString>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        // SAFETY: plain attribute assignment on a live object; both
        // pointers are borrowed for the duration of the call.
        if unsafe { pyo3::ffi::PyObject_GenericSetAttr(slf.as_ptr(), name.as_ptr(), value.as_ptr()) } < 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        if time_source::is_time_attr(name) {
            time_source::refresh(slf, true)?;
        }
        Ok(())
    }

    fn __delattr__(slf: &Bound<'_, Self>, name: &Bound<'_, PyString>) -> PyResult<()> {
        // SAFETY: as in __setattr__; a NULL value means deletion.
        if unsafe { pyo3::ffi::PyObject_GenericSetAttr(slf.as_ptr(), name.as_ptr(), std::ptr::null_mut()) } < 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        if time_source::is_time_attr(name) {
            time_source::refresh(slf, false)?;
        }
        Ok(())
    }

    // ----- clock and state -------------------------------------------------

    fn time(&self) -> f64 {
        clock::monotonic()
    }

    fn get_debug(&self, py: Python<'_>) -> Py<PyAny> {
        self.debug_value(py)
    }

    fn is_running(&self) -> bool {
        self.thread_id.load(Ordering::Relaxed) != 0
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn _check_closed(&self) -> PyResult<()> {
        self.check_closed()
    }

    fn _check_thread(&self) -> PyResult<()> {
        self.check_thread()
    }

    #[getter(_debug)]
    fn attr_debug(&self, py: Python<'_>) -> Py<PyAny> {
        self.debug_value(py)
    }

    #[setter(_debug)]
    fn set_attr_debug(&self, enabled: &Bound<'_, PyAny>) -> PyResult<()> {
        let flag = enabled.is_truthy()?;
        let value = (!enabled.is_exact_instance_of::<PyBool>()).then(|| enabled.clone().unbind());
        let previous = std::mem::replace(&mut *lock(&self.debug_value), value);
        self.shared.debug.store(flag, Ordering::Relaxed);
        drop(previous);
        Ok(())
    }

    #[getter(_closed)]
    fn attr_closed(&self) -> bool {
        self.is_closed()
    }

    #[getter(_stopping)]
    fn attr_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    #[setter(_stopping)]
    fn set_attr_stopping(&self, value: bool) {
        self.stopping.store(value, Ordering::Relaxed);
    }

    #[getter(_thread_id)]
    fn attr_thread_id(&self) -> Option<u64> {
        match self.thread_id.load(Ordering::Relaxed) {
            0 => None,
            tid => Some(tid),
        }
    }

    #[setter(_thread_id)]
    fn set_attr_thread_id(&self, value: Option<u64>) {
        self.thread_id.store(value.unwrap_or(0), Ordering::Relaxed);
    }

    #[getter]
    fn get_slow_callback_duration(&self, py: Python<'_>) -> Py<PyAny> {
        self.slow_callback_duration(py)
    }

    #[setter]
    fn set_slow_callback_duration(&self, value: Py<PyAny>) {
        let previous = lock(&self.slow_callback_duration).replace(value);
        drop(previous); // (its destructor may run Python: not under the lock)
    }

    #[getter(_clock_resolution)]
    fn attr_clock_resolution(&self) -> f64 {
        self.clock_resolution
    }

    #[getter(_current_handle)]
    fn attr_current_handle(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        lock(&self.current_handle).as_ref().map(|h| h.clone_ref(py))
    }

    #[getter(_task_factory)]
    fn attr_task_factory(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        lock(&self.task_factory).as_ref().map(|f| f.clone_ref(py))
    }

    #[setter(_task_factory)]
    fn set_attr_task_factory(&self, factory: Option<Py<PyAny>>) {
        let previous = std::mem::replace(&mut *lock(&self.task_factory), factory);
        drop(previous);
    }

    #[getter(_timer_cancelled_count)]
    fn attr_timer_cancelled_count(&self) -> usize {
        self.shared.timer_cancelled_count.load(Ordering::Relaxed)
    }

    fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        new_future(slf)
    }

    #[pyo3(signature = (coro, *, name=None, context=None))]
    fn create_task<'py>(slf: &Bound<'py, Self>, coro: Bound<'py, PyAny>, name: Option<Bound<'py, PyAny>>, context: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        scheduling::create_task(slf, coro, name, context)
    }

    fn _ready_count(&self) -> usize {
        lock(&self.sched).ready.len()
    }

    fn _scheduled_count(&self) -> usize {
        lock(&self.sched).timers.len()
    }

    // ----- scheduling (scheduling.rs) --------------------------------------

    /// `call_soon(callback, *args, context=None)`: a raw METH_FASTCALL
    /// method, parsed by hand (the hottest call of a running loop).
    #[classattr]
    fn call_soon(py: Python<'_>) -> PyResult<Py<PyAny>> {
        scheduling::fast_method(py, false)
    }

    /// `call_soon_threadsafe(callback, *args, context=None)`, likewise.
    #[classattr]
    fn call_soon_threadsafe(py: Python<'_>) -> PyResult<Py<PyAny>> {
        scheduling::fast_method(py, true)
    }

    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(slf: &Bound<'_, Self>, delay: Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>, context: Option<Bound<'_, PyAny>>) -> PyResult<Py<TimerHandle>> {
        scheduling::call_later(slf, delay, callback, args, context)
    }

    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(slf: &Bound<'_, Self>, when: Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>, context: Option<Bound<'_, PyAny>>) -> PyResult<Py<TimerHandle>> {
        scheduling::call_at(slf, when, callback, args, context)
    }

    /// Append an existing handle to the ready queue unless it is cancelled.
    fn _add_callback(&self, handle: Bound<'_, PyAny>) -> PyResult<()> {
        scheduling::add_callback(self, handle)
    }

    fn _write_to_self(&self) {
        self.wake();
    }

    /// Our TimerHandle counts its own cancellation; an asyncio.TimerHandle
    /// bound to this loop reports here, but is never in our heap.
    fn _timer_handle_cancelled(&self, _handle: &Bound<'_, PyAny>) {}

    // ----- running (run.rs) -------------------------------------------------

    /// The body of `run_forever`: iterate until `stop()`.
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        run::run_until_stopped(slf)
    }

    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        run::run_once(slf)
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        // stop() from another thread must not leave the loop asleep.
        self.wake_if_polling();
    }

    /// Drop everything scheduled and release the poller (asyncio's close()
    /// minus the parts written in Python).
    fn _close_core(&self, py: Python<'_>) -> PyResult<()> {
        // An iteration holds the poller: a callback that closes the loop
        // (after a failed nested run_forever() left it looking stopped)
        // gets asyncio's error, not a wait on itself.
        if self.poller.try_lock().is_err() {
            return Err(PyRuntimeError::new_err("Cannot close a running event loop"));
        }
        if self.closed.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let (ready, timers) = lock(&self.sched).take_all();
        for t in &timers {
            t.item.get().set_scheduled(false);
            t.item.bind(py).as_super().get().release(true);
        }
        for r in &ready {
            if let Ready::Native(h) = r {
                h.get().release(true);
            }
        }
        let (fd_handles, registrar) = lock(&self.fds).take_all();
        for entry in &fd_handles {
            entry.release_handles();
        }
        // The epoll instance (and its dup) and the eventfd are closed now,
        // as the standard loop closes its selector, not when the loop object dies.
        let poller = lock(&self.poller).take();
        let waker = lock(&self.waker).take();
        // Dropped here, with no lock held: finalizers may run Python code.
        drop((ready, timers, fd_handles, registrar, poller, waker));
        Ok(())
    }

    // ----- fd callbacks (fd_callbacks.rs) ------------------------------------

    #[pyo3(signature = (fd, callback, *args))]
    fn add_reader(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<()> {
        fd_callbacks::add(slf, &fd, callback, args, fd_callbacks::Dir::Read, true).map(drop)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn add_writer(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<()> {
        fd_callbacks::add(slf, &fd, callback, args, fd_callbacks::Dir::Write, true).map(drop)
    }

    fn remove_reader(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>) -> PyResult<bool> {
        fd_callbacks::remove(slf, &fd, fd_callbacks::Dir::Read, true)
    }

    fn remove_writer(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>) -> PyResult<bool> {
        fd_callbacks::remove(slf, &fd, fd_callbacks::Dir::Write, true)
    }

    /// asyncio's internal `_add_reader`: returns the handle (used by sock_*).
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<Py<Handle>> {
        fd_callbacks::add(slf, &fd, callback, args, fd_callbacks::Dir::Read, false)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<Py<Handle>> {
        fd_callbacks::add(slf, &fd, callback, args, fd_callbacks::Dir::Write, false)
    }

    fn _remove_reader(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>) -> PyResult<bool> {
        fd_callbacks::remove(slf, &fd, fd_callbacks::Dir::Read, false)
    }

    fn _remove_writer(slf: &Bound<'_, Self>, fd: Bound<'_, PyAny>) -> PyResult<bool> {
        fd_callbacks::remove(slf, &fd, fd_callbacks::Dir::Write, false)
    }

    /// Declare the self-pipe fd: it does not count as I/O worth polling for
    /// between callbacks (see run.rs).
    fn _set_internal_fd(&self, fd: i32) {
        lock(&self.fds).set_internal_fd(fd);
    }

    /// `(reader_handle, writer_handle)` registered for `fd`, for introspection.
    fn _fd_handles(&self, py: Python<'_>, fd: i32) -> (Option<Py<Handle>>, Option<Py<Handle>>) {
        lock(&self.fds).get(py, fd)
    }

    // ----- servers (accept.rs) -----------------------------------------------

    /// A listening socket's reader callback: its queued connections.
    #[pyo3(signature = (*args))]
    fn _accept_connection(slf: &Bound<'_, Self>, args: Bound<'_, PyTuple>) -> PyResult<()> {
        crate::accept::accept_connection(slf, &args)
    }

    // ----- garbage collection ----------------------------------------------

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Our handles are not tracked by the collector (see handles.rs), so
        // only foreign ones in the ready queue are worth visiting.
        if let Ok(s) = self.sched.try_lock() {
            if s.foreign_queued > 0 {
                for r in &s.ready {
                    if let Ready::Foreign(h) = r {
                        visit.call(h)?;
                    }
                }
            }
        }
        if let Ok(f) = self.fds.try_lock() {
            f.traverse(&visit)?;
        }
        for held in [&self.current_handle, &self.task_factory, &self.debug_value, &self.slow_callback_duration, &self.future_kwargs] {
            if let Ok(h) = held.try_lock() {
                if let Some(h) = h.as_ref() {
                    visit.call(h)?;
                }
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self.sched.try_lock().ok().map(|mut s| s.take_all());
        let fds = self.fds.try_lock().ok().map(|mut f| f.take_all());
        let factory = self.task_factory.try_lock().ok().and_then(|mut f| f.take());
        let debug_value = self.debug_value.try_lock().ok().and_then(|mut d| d.take());
        let slow = self.slow_callback_duration.try_lock().ok().and_then(|mut d| d.take());
        let future_kwargs = self.future_kwargs.try_lock().ok().and_then(|mut k| k.take());
        drop((taken, fds, factory, debug_value, slow, future_kwargs));
    }
}

/// `asyncio.Future(loop=lp)`, initialised with the loop's own `{'loop': lp}`.
pub(crate) fn new_future<'py>(lp: &Bound<'py, LoopCore>) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    let kwargs = {
        let mut kept = lock(&lp.get().future_kwargs);
        match kept.as_ref() {
            Some(kwargs) => kwargs.clone_ref(py),
            None => {
                let kwargs = pyo3::types::PyDict::new(py);
                kwargs.set_item(pyo3::intern!(py, "loop"), lp)?;
                kept.insert(kwargs.into_any().unbind()).clone_ref(py)
            }
        }
    };
    crate::pyhelpers::new_future(kwargs.bind(py).cast()?)
}

/// `loop.call_soon(callback, *args)` for Rust's own callbacks (the class's
/// method, whatever a subclass defines: these are the loop's internals).
pub(crate) fn call_soon(lp: &Bound<'_, LoopCore>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<()> {
    scheduling::call_soon(lp, callback, args, None, false).map(drop)
}

/// `loop._add_reader(fd, callback)` / `_add_writer` for the Rust transports.
pub(crate) fn watch_fd(lp: &Bound<'_, LoopCore>, fd: RawFd, writable: bool, callback: Bound<'_, PyAny>) -> PyResult<Py<Handle>> {
    let py = lp.py();
    let fd_obj = fd.into_pyobject(py)?.into_any();
    fd_callbacks::add(lp, &fd_obj, callback, PyTuple::empty(py), fd_callbacks::Dir::of(writable), false)
}

/// `watch_fd` for a wait that ends at its first event; a callback that finds
/// the fd not ready calls [`rearm_fd`] (see `fd_callbacks::add_once`).
pub(crate) fn watch_fd_once(lp: &Bound<'_, LoopCore>, fd: RawFd, writable: bool, callback: Bound<'_, PyAny>) -> PyResult<Py<Handle>> {
    fd_callbacks::add_once(lp, fd, callback, fd_callbacks::Dir::of(writable))
}

pub(crate) fn rearm_fd(lp: &Bound<'_, LoopCore>, fd: RawFd) -> PyResult<()> {
    fd_callbacks::rearm(lp, fd)
}

/// `loop._remove_reader(fd)` / `_remove_writer`; false if nothing was watched.
pub(crate) fn unwatch_fd(lp: &Bound<'_, LoopCore>, fd: RawFd, writable: bool) -> PyResult<bool> {
    fd_callbacks::remove_raw(lp, fd, fd_callbacks::Dir::of(writable))
}

/// Raise asyncio's TypeError for a `None` delay or deadline (3.11+).
fn reject_none(core: &LoopCore, value: &Bound<'_, PyAny>, message: &'static str) -> PyResult<()> {
    if core.py311_plus && value.is_none() {
        return Err(PyTypeError::new_err(message));
    }
    Ok(())
}
