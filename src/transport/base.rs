//! What every socket transport shares, as asyncio's `_SelectorTransport`
//! and `_FlowControlMixin`: the references a transport holds, the
//! closing/connection-lost state machine, reading on and off, flow control
//! against the write-buffer water marks and the fatal-error path.
//!
//! [`Core`] is generic over the write queue (`B`) and over what only one
//! kind of transport needs (`X`); the stream and datagram transports each
//! wrap one in their pyclass.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::{PyAttributeError, PyKeyboardInterrupt, PyOSError, PySystemExit, PyTypeError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::call::PyCallArgs;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

use super::slots::{self, Slot};
use crate::event_loop::{self, LoopCore};

/// asyncio's default high-water mark (`_FlowControlMixin`); low is a quarter.
const DEFAULT_HIGH_WATER: f64 = 64.0 * 1024.0;
/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// A write queue: how much it holds against the water marks, and emptying
/// it (the contents are handed back, to be dropped with no lock held).
pub trait WriteQueue: Default {
    fn size(&self) -> usize;

    fn take(&mut self) -> Self {
        std::mem::take(self)
    }
}

/// The part of a transport's state only one kind of transport has.
pub trait KindState {
    /// What to drop once the connection is lost (references that would
    /// keep the protocol alive); dropped by the caller with no lock held.
    fn release(&mut self) -> Box<dyn std::any::Any>;

    /// Whether, released, it still holds an object that could be in a
    /// reference cycle (then the core stays on the collector's lists).
    fn keeps_references(&self) -> bool {
        true
    }
}

pub struct State<B, X> {
    pub loop_: Option<Py<LoopCore>>,
    /// The Python transport object passed to the protocol and error reports.
    pub transport: Option<Py<PyAny>>,
    pub sock: Option<Py<PyAny>>,
    pub protocol: Option<Py<PyAny>>,
    pub protocol_connected: bool,
    /// Set when `connection_lost` is scheduled; counts writes after that.
    pub conn_lost: u32,
    pub closing: bool,
    pub paused: bool,
    pub protocol_paused: bool,
    pub high_water: f64,
    pub low_water: f64,
    pub buffer: B,
    pub extra: X,
}

impl<B, X> State<B, X> {
    pub fn is_reading(&self) -> bool {
        !self.closing && !self.paused
    }
}

pub struct Core<B, X> {
    /// The socket's fd number, -1 once the connection is lost and the
    /// socket closed: the number may then belong to another file, which a
    /// late call must never reach.
    fd: AtomicI32,
    state: Mutex<State<B, X>>,
}

/// The TypeError asyncio's `write()`/`sendto()` raise for data that is not
/// bytes, bytearray or memoryview.
pub fn not_bytes_like(data: &Bound<'_, PyAny>) -> PyErr {
    match data.get_type().name().and_then(|n| n.repr()) {
        Ok(type_name) => PyTypeError::new_err(format!("data argument must be a bytes-like object, not {type_name}")),
        Err(e) => e,
    }
}

/// What asyncio raises where a transport whose connection is lost uses its
/// loop or socket reference, which `_call_connection_lost` set to None.
pub fn released_error(attribute: &str) -> PyErr {
    PyAttributeError::new_err(format!("'NoneType' object has no attribute '{attribute}'"))
}

/// `except (SystemExit, KeyboardInterrupt): raise`
pub fn must_propagate(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
}

impl<B: WriteQueue, X> Core<B, X> {
    pub fn new(loop_: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>, transport: &Bound<'_, PyAny>, extra: X) -> PyResult<Self> {
        let fd: RawFd = sock.call_method0(pyo3::intern!(sock.py(), "fileno"))?.extract()?;
        Self::with_fd(loop_, sock, fd, transport, extra)
    }

    /// `new` for a caller that has asked the socket for its fd already.
    pub fn with_fd(loop_: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>, fd: RawFd, transport: &Bound<'_, PyAny>, extra: X) -> PyResult<Self> {
        let loop_ = loop_.cast::<LoopCore>()?.clone();
        Ok(Core {
            fd: AtomicI32::new(fd),
            state: Mutex::new(State {
                loop_: Some(loop_.unbind()),
                transport: Some(transport.clone().unbind()),
                sock: Some(sock.clone().unbind()),
                protocol: None,
                protocol_connected: false,
                conn_lost: 0,
                closing: false,
                paused: false,
                protocol_paused: false,
                high_water: DEFAULT_HIGH_WATER,
                low_water: DEFAULT_HIGH_WATER / 4.0,
                buffer: B::default(),
                extra,
            }),
        })
    }

    /// The socket's fd; -1 once the connection is lost.
    pub fn fd(&self) -> RawFd {
        self.fd.load(Ordering::Relaxed)
    }

    /// The connection is lost and the socket closed (`_sock` is None).
    pub fn released(&self) -> bool {
        self.fd() < 0
    }

    /// The state; never held while Python code runs.
    pub fn state(&self) -> MutexGuard<'_, State<B, X>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn event_loop<'py>(&self, py: Python<'py>) -> Option<Bound<'py, LoopCore>> {
        self.state().loop_.as_ref().map(|l| l.bind(py).clone())
    }

    pub fn transport<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.state().transport.as_ref().map(|t| t.bind(py).clone())
    }

    pub fn protocol<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.state().protocol.as_ref().map(|p| p.bind(py).clone())
    }

    pub fn sock<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.state().sock.as_ref().map(|s| s.bind(py).clone())
    }

    /// Call a method of the Python transport object (the cold paths).
    fn call_transport<'py>(&self, py: Python<'py>, method: &Bound<'py, PyString>, args: impl PyCallArgs<'py>) -> PyResult<()> {
        match self.transport(py) {
            Some(t) => t.call_method1(method, args).map(drop),
            None => Ok(()),
        }
    }

    /// `logger.debug(message, transport)` in debug mode.
    pub fn debug_log(&self, py: Python<'_>, message: &str) -> PyResult<()> {
        if self.event_loop(py).is_some_and(|l| l.get().debug()) {
            self.call_transport(py, pyo3::intern!(py, "_debug_log"), (message,))?;
        }
        Ok(())
    }

    /// `loop._add_reader(fd, obj._read_ready)` / `_add_writer(fd, obj._write_ready)`
    /// (the pyclass object `obj` provides the callbacks).
    pub fn watch(&self, obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<()> {
        let py = obj.py();
        let Some(lp) = self.event_loop(py) else { return Ok(()) };
        let callback = obj.getattr(if writable { pyo3::intern!(py, "_write_ready") } else { pyo3::intern!(py, "_read_ready") })?;
        event_loop::watch_fd(&lp, self.fd(), writable, callback).map(drop)
    }

    pub fn unwatch(&self, py: Python<'_>, writable: bool) -> PyResult<()> {
        match self.event_loop(py) {
            Some(lp) => event_loop::unwatch_fd(&lp, self.fd(), writable).map(drop),
            None => Ok(()),
        }
    }

    /// `loop.call_soon(transport._call_connection_lost, exc)`
    pub fn schedule_connection_lost(&self, py: Python<'_>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let (Some(lp), Some(t)) = (self.event_loop(py), self.transport(py)) else { return Err(released_error("call_soon")) };
        let callback = t.getattr(pyo3::intern!(py, "_call_connection_lost"))?;
        let exc = exc.unwrap_or_else(|| py.None().into_bound(py));
        event_loop::call_soon(&lp, callback, PyTuple::new(py, [exc])?)
    }

    /// `transport._call_connection_lost(None)`, now (the queue drained after close()).
    pub fn connection_lost_now(&self, py: Python<'_>) -> PyResult<()> {
        self.call_transport(py, pyo3::intern!(py, "_call_connection_lost"), (py.None(),))
    }

    /// asyncio's `except (SystemExit, KeyboardInterrupt): raise` /
    /// `except BaseException as exc: self._fatal_error(exc, message)`.
    /// Once the connection is lost, asyncio's `_fatal_error` fails on its
    /// None loop, and so does this.
    pub fn fatal_error(&self, py: Python<'_>, err: PyErr, message: &str) -> PyResult<()> {
        if must_propagate(py, &err) {
            return Err(err);
        }
        let Some(transport) = self.transport(py) else {
            let is_os_error = err.is_instance_of::<PyOSError>(py);
            return Err(released_error(if is_os_error { "get_debug" } else { "call_exception_handler" }));
        };
        transport.call_method1(pyo3::intern!(py, "_fatal_error"), (err.into_value(py), message)).map(drop)
    }

    /// `_force_close`: drop the queue, stop reading, lose the connection soon.
    pub fn force_close(&self, py: Python<'_>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let (had_buffer, was_closing, dropped) = {
            let mut s = self.state();
            if s.conn_lost > 0 {
                return Ok(());
            }
            let had_buffer = s.buffer.size() > 0;
            let dropped = s.buffer.take();
            let was_closing = std::mem::replace(&mut s.closing, true);
            s.conn_lost += 1;
            (had_buffer, was_closing, dropped)
        };
        drop(dropped);
        if had_buffer {
            self.unwatch(py, true)?;
        }
        if !was_closing {
            self.unwatch(py, false)?;
        }
        self.schedule_connection_lost(py, exc)
    }

    /// `close()`: stop reading; the connection is lost once the queue is sent.
    pub fn close(&self, py: Python<'_>) -> PyResult<()> {
        let drained = {
            let mut s = self.state();
            if s.closing {
                return Ok(());
            }
            s.closing = true;
            s.buffer.size() == 0
        };
        self.unwatch(py, false)?;
        if drained {
            self.state().conn_lost += 1;
            self.unwatch(py, true)?;
            self.schedule_connection_lost(py, None)?;
        }
        Ok(())
    }

    /// The check writes make first: false when the data is to be dropped
    /// because the connection is lost (logged after a few such writes).
    pub fn writable_or_log(&self, py: Python<'_>) -> PyResult<bool> {
        self.writable_or_log_as(py, false, "socket.send() raised exception.")
    }

    /// The same check with another warning text; `closing_drops`: writes
    /// after `close()` are dropped too (asyncio's pipe transports).
    pub fn writable_or_log_as(&self, py: Python<'_>, closing_drops: bool, warning: &str) -> PyResult<bool> {
        let warn = {
            let mut s = self.state();
            if s.conn_lost == 0 && !(closing_drops && s.closing) {
                return Ok(true);
            }
            let warn = s.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
            s.conn_lost += 1;
            warn
        };
        if warn {
            py.import("asyncio.log")?.getattr("logger")?.call_method1("warning", (warning,))?;
        }
        Ok(false)
    }

    // ----- reading -----------------------------------------------------------

    /// Watch for reading if the transport reads (after `connection_made`, on resume).
    pub fn start_reading(&self, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        if !self.state().is_reading() {
            return Ok(());
        }
        self.watch(obj, false)
    }

    pub fn pause_reading(&self, py: Python<'_>) -> PyResult<()> {
        {
            let mut s = self.state();
            if !s.is_reading() {
                return Ok(());
            }
            s.paused = true;
        }
        self.unwatch(py, false)?;
        self.debug_log(py, "%r pauses reading")
    }

    pub fn resume_reading(&self, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        {
            let mut s = self.state();
            if s.closing || !s.paused {
                return Ok(());
            }
            s.paused = false;
        }
        self.start_reading(obj)?;
        self.debug_log(obj.py(), "%r resumes reading")
    }

    // ----- flow control ----------------------------------------------------------

    /// `_maybe_pause_protocol`: tell the protocol once the queue is above
    /// the high-water mark.
    pub fn maybe_pause_protocol(&self, py: Python<'_>) -> PyResult<()> {
        let protocol = {
            let mut s = self.state();
            if s.buffer.size() as f64 <= s.high_water || s.protocol_paused {
                return Ok(());
            }
            s.protocol_paused = true;
            s.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        self.flow_control_call(py, protocol, "pause_writing", "protocol.pause_writing() failed")
    }

    /// `_maybe_resume_protocol`: once the queue drained to the low-water mark.
    pub fn maybe_resume_protocol(&self, py: Python<'_>) -> PyResult<()> {
        let protocol = {
            let mut s = self.state();
            if !s.protocol_paused || s.buffer.size() as f64 > s.low_water {
                return Ok(());
            }
            s.protocol_paused = false;
            s.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        self.flow_control_call(py, protocol, "resume_writing", "protocol.resume_writing() failed")
    }

    fn flow_control_call(&self, py: Python<'_>, protocol: Option<Py<PyAny>>, method: &str, message: &str) -> PyResult<()> {
        let Some(protocol) = protocol else { return Ok(()) };
        match protocol.bind(py).call_method0(method) {
            Ok(_) => Ok(()),
            Err(e) if must_propagate(py, &e) => Err(e),
            Err(e) => self.call_transport(py, pyo3::intern!(py, "_flow_control_failed"), (message, e.into_value(py))),
        }
    }

    /// The marks `set_write_buffer_limits` worked out (in Python, with
    /// asyncio's own arithmetic), applied at once as asyncio does.
    pub fn set_water_marks(&self, py: Python<'_>, high: f64, low: f64) -> PyResult<()> {
        {
            let mut s = self.state();
            s.high_water = high;
            s.low_water = low;
        }
        self.maybe_pause_protocol(py)
    }

    // ----- end of life -------------------------------------------------------------

    /// `_call_connection_lost(exc)`: the protocol's `connection_lost`, then,
    /// even when that raised (asyncio's `finally`), close the socket, let go
    /// of the loop, run `lost` (what the kind of transport adds), drop every
    /// reference and leave the server.
    pub fn call_connection_lost(&self, py: Python<'_>, exc: &Bound<'_, PyAny>, lost: impl FnOnce() -> PyResult<()>) -> PyResult<()>
    where
        X: KindState,
    {
        let (transport, protocol) = {
            let s = self.state();
            let protocol = if s.protocol_connected { s.protocol.as_ref().map(|p| p.clone_ref(py)) } else { None };
            (s.transport.as_ref().map(|t| t.clone_ref(py)), protocol)
        };
        let called = match protocol {
            Some(p) => p.bind(py).call_method1(pyo3::intern!(py, "connection_lost"), (exc,)).map(drop),
            None => Ok(()),
        };
        // Called again: asyncio's `self._sock.close()` meets None.
        let Some(transport) = transport.map(|t| t.into_bound(py)) else { return Err(released_error("close")) };
        let cleanup = (|| {
            let none = py.None().into_bound(py);
            crate::socket_object::close(&slots::get(&transport, Slot::Sock)?.unwrap_or_else(|| none.clone()))?;
            slots::set(&transport, Slot::Sock, &none)?;
            slots::set(&transport, Slot::Loop, &none)?;
            lost()?;
            self.release();
            super::server_link::detach_server(&transport)
        })();
        cleanup.and(called)
    }

    /// After `connection_lost`: drop every reference, so that a transport
    /// object kept around keeps no protocol or socket alive.
    pub fn release(&self)
    where
        X: KindState,
    {
        let taken = {
            let mut s = self.state();
            self.fd.store(-1, Ordering::Relaxed);
            (s.loop_.take(), s.transport.take(), s.sock.take(), s.protocol.take(), s.buffer.take(), s.extra.release())
        };
        drop(taken);
    }

    /// GC support: the references of the common state, then `extra`'s.
    pub fn traverse(&self, visit: &PyVisit<'_>, extra: impl FnOnce(&X) -> Result<(), PyTraverseError>) -> Result<(), PyTraverseError> {
        // Never blocks: a held lock means an update is under way, and not
        // visiting only keeps objects alive one collection longer.
        let Ok(s) = self.state.try_lock() else { return Ok(()) };
        visit.call(&s.loop_)?;
        visit.call(&s.transport)?;
        visit.call(&s.sock)?;
        visit.call(&s.protocol)?;
        extra(&s.extra)
    }

    pub fn clear(&self, extra: impl FnOnce(&mut X) -> Box<dyn std::any::Any>) {
        self.fd.store(-1, Ordering::Relaxed);
        let taken = self.state.try_lock().ok().map(|mut s| {
            let common = (s.loop_.take(), s.transport.take(), s.sock.take(), s.protocol.take());
            (common, extra(&mut s.extra))
        });
        drop(taken);
    }
}

/// The `#[pymethods]` table of a transport pyclass whose `core` field is a
/// [`Core`]: the methods given, then those every transport has, delegated.
macro_rules! transport_pymethods {
    ($ty:ty, $($specific:tt)*) => {
        /// The methods each connection schedules once, called by the loop as
        /// Rust functions (`native_callbacks`).
        impl $ty {
            pub(crate) fn native_start_reading(core: &::pyo3::Bound<'_, ::pyo3::PyAny>) -> ::pyo3::PyResult<()> {
                Self::_start_reading(core.cast()?)
            }

            pub(crate) fn native_call_connection_lost(core: &::pyo3::Bound<'_, ::pyo3::PyAny>, exc: &::pyo3::Bound<'_, ::pyo3::PyAny>) -> ::pyo3::PyResult<()> {
                Self::_call_connection_lost(core.cast()?, exc.clone())
            }

            /// `resume_reading()` of the core `obj` (this object).
            pub(crate) fn resume_reading_of(&self, obj: &::pyo3::Bound<'_, ::pyo3::PyAny>) -> ::pyo3::PyResult<()> {
                self.core.resume_reading(obj)
            }
        }

        #[::pyo3::pymethods]
        impl $ty {
            $($specific)*

            /// Start reading once `connection_made` has run (scheduled by
            /// the transport's constructor, as asyncio does).
            fn _start_reading(slf: &::pyo3::Bound<'_, Self>) -> ::pyo3::PyResult<()> {
                slf.get().core.start_reading(slf.as_any())
            }

            pub(crate) fn is_reading(&self) -> bool {
                self.core.state().is_reading()
            }

            pub(crate) fn pause_reading(&self, py: ::pyo3::Python<'_>) -> ::pyo3::PyResult<()> {
                self.core.pause_reading(py)
            }

            fn resume_reading(slf: &::pyo3::Bound<'_, Self>) -> ::pyo3::PyResult<()> {
                slf.get().resume_reading_of(slf.as_any())
            }

            fn get_write_buffer_size(&self) -> usize {
                $crate::transport::base::WriteQueue::size(&self.core.state().buffer)
            }

            fn _set_water_marks(&self, py: ::pyo3::Python<'_>, high: f64, low: f64) -> ::pyo3::PyResult<()> {
                self.core.set_water_marks(py, high, low)
            }

            pub(crate) fn is_closing(&self) -> bool {
                self.core.state().closing
            }

            /// Stop reading; once the queue is sent, the connection is lost.
            pub(crate) fn close(&self, py: ::pyo3::Python<'_>) -> ::pyo3::PyResult<()> {
                self.core.close(py)
            }

            /// Drop the queue and lose the connection now.
            pub(crate) fn abort(&self, py: ::pyo3::Python<'_>) -> ::pyo3::PyResult<()> {
                self.core.force_close(py, None)
            }

            #[pyo3(signature = (exc))]
            fn _force_close(&self, py: ::pyo3::Python<'_>, exc: Option<::pyo3::Bound<'_, ::pyo3::PyAny>>) -> ::pyo3::PyResult<()> {
                self.core.force_close(py, exc)
            }

            fn _release(&self) {
                self.core.release();
            }

            fn _call_connection_lost(slf: &::pyo3::Bound<'_, Self>, exc: ::pyo3::Bound<'_, ::pyo3::PyAny>) -> ::pyo3::PyResult<()> {
                let (py, this) = (slf.py(), slf.get());
                let result = this.core.call_connection_lost(py, &exc, || this.connection_lost_done(py));
                // Released, the core holds no references: it can be in no
                // cycle, and the transport object that keeps it often is in
                // one (with its protocol) and waits for the collector.
                if this.core.released() && !$crate::transport::base::KindState::keeps_references(&this.core.state().extra) {
                    $crate::pyhelpers::untrack(slf.as_unbound());
                }
                result
            }

            /// The kind's `store_protocol`; after the connection was lost
            /// (the core untracked, see `_call_connection_lost`) the core
            /// holds a reference again, so it can be in a cycle again.
            fn set_protocol(slf: &::pyo3::Bound<'_, Self>, protocol: &::pyo3::Bound<'_, ::pyo3::PyAny>) -> ::pyo3::PyResult<()> {
                slf.get().store_protocol(protocol)?;
                if slf.get().core.released() {
                    $crate::pyhelpers::track_again(slf);
                }
                Ok(())
            }

            fn get_protocol<'py>(&self, py: ::pyo3::Python<'py>) -> Option<::pyo3::Bound<'py, ::pyo3::PyAny>> {
                self.core.protocol(py)
            }

            #[getter(_protocol_connected)]
            fn attr_protocol_connected(&self) -> bool {
                self.core.state().protocol_connected
            }

            #[getter(_protocol_paused)]
            fn attr_protocol_paused(&self) -> bool {
                self.core.state().protocol_paused
            }

            #[getter(_conn_lost)]
            fn attr_conn_lost(&self) -> u32 {
                self.core.state().conn_lost
            }

            #[getter(_paused)]
            fn attr_paused(&self) -> bool {
                self.core.state().paused
            }
        }
    };
}
pub(crate) use transport_pymethods;
