//! The stream transport of TCP and Unix sockets: one implementation for
//! both, as asyncio's `_SelectorSocketTransport`, step for step.
//!
//! `StreamTransportCore` holds the state and runs the hot paths: the read
//! (`recv` into a reused buffer, one `bytes` per read, or straight into a
//! `BufferedProtocol`'s buffer), `write` (sent at once, only the remainder
//! queued, queued chunks sent with one vectored send), flow control and the
//! close/abort state machine. The Python object users see is
//! `ferroloop._stream.SocketTransport` (an `asyncio.Transport`), which
//! binds these methods as its own and keeps the cold parts: extra info,
//! repr, `connection_lost` and error reporting.
//!
//! The fd is watched through the loop's own `_add_reader`/`_add_writer`
//! handles, so callback order, contexts and debug mode are the loop's.

use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PySystemExit, PyTypeError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};

use super::socket_io::{self, os_error, would_block};
use super::write_buffer::WriteBuffer;
use crate::event_loop::{self, LoopCore};

/// asyncio's `max_size`: the most one read asks for.
const MAX_READ: usize = 256 * 1024;
/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;
/// asyncio's default write buffer limits (`_FlowControlMixin`).
const DEFAULT_HIGH_WATER: f64 = 64.0 * 1024.0;

/// Bytes waiting to be sent: an immutable `bytes` is held as is, anything
/// else (bytearray, memoryview) is copied, since its owner may change it.
pub enum Chunk {
    Shared(PyBackedBytes),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        match self {
            Chunk::Shared(b) => b,
            Chunk::Owned(v) => v,
        }
    }
}

/// How the protocol takes data: asyncio picks one at `set_protocol`.
enum Receiver {
    DataReceived(Py<PyAny>),
    /// The protocol had no `data_received` when it was set: look it up at
    /// each read, so the error is the one asyncio would raise.
    LookUp,
    Buffered { get_buffer: Py<PyAny>, buffer_updated: Py<PyAny> },
}

struct State {
    loop_: Option<Py<LoopCore>>,
    /// The `SocketTransport` passed to the protocol and error reports.
    transport: Option<Py<PyAny>>,
    sock: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    receiver: Option<Receiver>,
    protocol_connected: bool,
    conn_lost: u32,
    closing: bool,
    paused: bool,
    eof: bool,
    protocol_paused: bool,
    high_water: f64,
    low_water: f64,
    buffer: WriteBuffer<Chunk>,
    empty_waiter: Option<Py<PyAny>>,
}

impl State {
    fn is_reading(&self) -> bool {
        !self.closing && !self.paused
    }
}

#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct StreamTransportCore {
    fd: RawFd,
    state: Mutex<State>,
}

/// What a call into Python after a state change must do, worked out while
/// the state lock was held and done after it was released.
struct Deferred<'py> {
    loop_: Option<Bound<'py, LoopCore>>,
    transport: Option<Bound<'py, PyAny>>,
}

impl StreamTransportCore {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handles<'py>(&self, py: Python<'py>) -> Deferred<'py> {
        let s = self.state();
        Deferred { loop_: s.loop_.as_ref().map(|l| l.bind(py).clone()), transport: s.transport.as_ref().map(|t| t.bind(py).clone()) }
    }

    fn debug(&self, py: Python<'_>) -> bool {
        self.state().loop_.as_ref().is_some_and(|l| l.bind(py).get().debug())
    }

    /// `logger.debug(message, transport)` in debug mode.
    fn debug_log(&self, py: Python<'_>, message: &str) -> PyResult<()> {
        if !self.debug(py) {
            return Ok(());
        }
        match self.handles(py).transport {
            Some(t) => t.call_method1(pyo3::intern!(py, "_debug_log"), (message,)).map(drop),
            None => Ok(()),
        }
    }

    fn watch(slf: &Bound<'_, Self>, writable: bool) -> PyResult<()> {
        let py = slf.py();
        let Some(lp) = slf.get().handles(py).loop_ else { return Ok(()) };
        let callback = slf.getattr(if writable { pyo3::intern!(py, "_write_ready") } else { pyo3::intern!(py, "_read_ready") })?;
        event_loop::watch_fd(&lp, slf.get().fd, writable, callback).map(drop)
    }

    fn unwatch(&self, py: Python<'_>, writable: bool) -> PyResult<()> {
        match self.handles(py).loop_ {
            Some(lp) => event_loop::unwatch_fd(&lp, self.fd, writable).map(drop),
            None => Ok(()),
        }
    }

    /// `loop.call_soon(transport._call_connection_lost, exc)`
    fn schedule_connection_lost(&self, py: Python<'_>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let Deferred { loop_: Some(lp), transport: Some(t) } = self.handles(py) else { return Ok(()) };
        let callback = t.getattr(pyo3::intern!(py, "_call_connection_lost"))?;
        lp.call_method1(pyo3::intern!(py, "call_soon"), (callback, exc)).map(drop)
    }

    /// asyncio's `except (SystemExit, KeyboardInterrupt): raise` /
    /// `except BaseException as exc: self._fatal_error(exc, message)`.
    fn fatal_error(&self, py: Python<'_>, err: PyErr, message: &str) -> PyResult<()> {
        if err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py) {
            return Err(err);
        }
        match self.handles(py).transport {
            Some(t) => t.call_method1(pyo3::intern!(py, "_fatal_error"), (err.into_value(py), message)).map(drop),
            None => Ok(()),
        }
    }

    fn force_close(&self, py: Python<'_>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let (had_buffer, was_closing, dropped) = {
            let mut s = self.state();
            if s.conn_lost > 0 {
                return Ok(());
            }
            let had_buffer = !s.buffer.is_empty();
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

    /// `_maybe_pause_protocol`: tell the protocol once the buffer is above
    /// the high-water mark.
    fn maybe_pause_protocol(&self, py: Python<'_>) -> PyResult<()> {
        let protocol = {
            let mut s = self.state();
            if s.buffer.len() as f64 <= s.high_water || s.protocol_paused {
                return Ok(());
            }
            s.protocol_paused = true;
            s.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        self.flow_control_call(py, protocol, "pause_writing", "protocol.pause_writing() failed")
    }

    /// `_maybe_resume_protocol`: once the buffer drained to the low-water mark.
    fn maybe_resume_protocol(&self, py: Python<'_>) -> PyResult<()> {
        let protocol = {
            let mut s = self.state();
            if !s.protocol_paused || s.buffer.len() as f64 > s.low_water {
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
            Err(e) if e.is_instance_of::<PySystemExit>(py) || e.is_instance_of::<PyKeyboardInterrupt>(py) => Err(e),
            Err(e) => match self.handles(py).transport {
                Some(t) => t.call_method1(pyo3::intern!(py, "_flow_control_failed"), (message, e.into_value(py))).map(drop),
                None => Ok(()),
            },
        }
    }

    /// The checks `write` and `writelines` make before queueing anything;
    /// false when the data is to be dropped (connection lost).
    fn accept_write(&self, py: Python<'_>, method: &str) -> PyResult<bool> {
        let mut s = self.state();
        if s.eof {
            return Err(PyRuntimeError::new_err(format!("Cannot call {method}() after write_eof()")));
        }
        if s.empty_waiter.is_some() {
            let what = if method == "write" { "write" } else { "writelines" };
            return Err(PyRuntimeError::new_err(format!("unable to {what}; sendfile is in progress")));
        }
        if s.conn_lost > 0 {
            let warn = s.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
            s.conn_lost += 1;
            drop(s);
            if warn {
                py.import("asyncio.log")?.getattr("logger")?.call_method1("warning", ("socket.send() raised exception.",))?;
            }
            return Ok(false);
        }
        Ok(true)
    }

    /// Send what can go now when nothing is queued, queue the rest, watch
    /// for writability if anything was queued, then apply flow control.
    fn send_or_queue(slf: &Bound<'_, Self>, chunks: Vec<Chunk>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let was_empty = this.state().buffer.is_empty();
        let mut sent = 0;
        if was_empty {
            let result = if chunks.len() == 1 {
                socket_io::send(this.fd, chunks[0].as_ref())
            } else {
                let slices: Vec<_> = chunks.iter().map(|c| std::io::IoSlice::new(c.as_ref())).collect();
                socket_io::send_vectored(this.fd, &slices)
            };
            match result {
                Ok(n) => sent = n,
                Err(e) if would_block(&e) => {}
                Err(e) => return this.fatal_error(py, os_error(e), "Fatal write error on socket transport"),
            }
            if sent == chunks.iter().map(|c| c.as_ref().len()).sum::<usize>() {
                return Ok(());
            }
            Self::watch(slf, true)?;
        }
        {
            let mut s = this.state();
            for chunk in chunks {
                let len = chunk.as_ref().len();
                let skip = sent.min(len);
                sent -= skip;
                s.buffer.push(chunk, skip);
            }
        }
        this.maybe_pause_protocol(py)
    }

    /// `protocol.data_received(data)`; `target` is the cached bound method,
    /// or the protocol itself when it had none to cache (`Receiver::LookUp`).
    fn deliver(&self, py: Python<'_>, target: Py<PyAny>, data: Bound<'_, PyBytes>) -> PyResult<()> {
        let lookup = matches!(self.state().receiver, Some(Receiver::LookUp));
        let target = target.into_bound(py);
        if lookup {
            target.call_method1(pyo3::intern!(py, "data_received"), (data,)).map(drop)
        } else {
            target.call1((data,)).map(drop)
        }
    }

    fn on_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.debug_log(py, "%r received EOF")?;
        let Some(protocol) = this.state().protocol.as_ref().map(|p| p.clone_ref(py)) else { return Ok(()) };
        let keep_open = match protocol.bind(py).call_method0(pyo3::intern!(py, "eof_received")).and_then(|r| r.is_truthy()) {
            Ok(k) => k,
            Err(e) => return this.fatal_error(py, e, "Fatal error: protocol.eof_received() call failed."),
        };
        if keep_open {
            // The protocol may still write, but nothing more can be read.
            this.unwatch(py, false)
        } else {
            Self::close(slf)
        }
    }

    fn read_into_protocol_buffer(slf: &Bound<'_, Self>, get_buffer: Py<PyAny>, buffer_updated: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let buf = match get_buffer.bind(py).call1((-1,)).and_then(|b| {
            if b.len()? == 0 {
                return Err(PyRuntimeError::new_err("get_buffer() returned an empty buffer"));
            }
            Ok(b)
        }) {
            Ok(b) => b,
            Err(e) => return this.fatal_error(py, e, "Fatal error: protocol.get_buffer() call failed."),
        };
        let received = match PyBuffer::<u8>::get(&buf) {
            Ok(view) if !view.readonly() && view.is_c_contiguous() => {
                // SAFETY: `view` keeps the exporter's memory alive and
                // unmoved until it is dropped after this call; it is
                // writable and contiguous (checked above); no Python code
                // runs while the slice is in use, so nothing else touches it.
                let slice = unsafe { std::slice::from_raw_parts_mut(view.buf_ptr() as *mut u8, view.len_bytes()) };
                socket_io::recv(this.fd, slice).map_err(os_error)
            }
            // Some other kind of buffer: let the socket module deal with it.
            _ => match this.state().sock.as_ref().map(|s| s.clone_ref(py)) {
                Some(sock) => match sock.bind(py).call_method1(pyo3::intern!(py, "recv_into"), (&buf,)) {
                    Ok(n) => n.extract::<usize>(),
                    Err(e) if e.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py) || e.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py) => return Ok(()),
                    Err(e) => Err(e),
                },
                None => return Ok(()),
            },
        };
        match received {
            Ok(0) => Self::on_eof(slf),
            Ok(n) => match buffer_updated.bind(py).call1((n,)) {
                Ok(_) => Ok(()),
                Err(e) => this.fatal_error(py, e, "Fatal error: protocol.buffer_updated() call failed."),
            },
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py) || e.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py) => Ok(()),
            Err(e) => this.fatal_error(py, e, "Fatal read error on socket transport"),
        }
    }
}

/// `data` as a chunk to send: a `bytes` is held, other buffers are copied.
/// The error for anything else is the one `write()` raises, or for
/// `writelines()` the one of its `memoryview(data)`.
fn chunk_of(data: &Bound<'_, PyAny>, for_writelines: bool) -> PyResult<Chunk> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(Chunk::Shared(PyBackedBytes::from(b.clone())));
    }
    if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
        if let Ok(view) = PyBuffer::<u8>::get(data) {
            if view.is_c_contiguous() {
                return Ok(Chunk::Owned(view.to_vec(data.py())?));
            }
        }
        // Any other layout: what bytes() makes of it.
        let copy = data.py().get_type::<PyBytes>().call1((data,))?.cast_into::<PyBytes>()?;
        return Ok(Chunk::Shared(PyBackedBytes::from(copy)));
    }
    let type_name = data.get_type().name()?.repr()?;
    Err(PyTypeError::new_err(if for_writelines {
        format!("memoryview: a bytes-like object is required, not {type_name}")
    } else {
        format!("data argument must be a bytes-like object, not {type_name}")
    }))
}

#[pymethods]
impl StreamTransportCore {
    #[new]
    fn new(py: Python<'_>, loop_: Bound<'_, PyAny>, sock: Bound<'_, PyAny>, transport: Bound<'_, PyAny>, protocol: Bound<'_, PyAny>) -> PyResult<Self> {
        let loop_ = loop_.cast_into::<LoopCore>()?;
        let fd: RawFd = sock.call_method0(pyo3::intern!(py, "fileno"))?.extract()?;
        let core = StreamTransportCore {
            fd,
            state: Mutex::new(State {
                loop_: Some(loop_.unbind()),
                transport: Some(transport.unbind()),
                sock: Some(sock.unbind()),
                protocol: None,
                receiver: None,
                protocol_connected: false,
                conn_lost: 0,
                closing: false,
                paused: false,
                eof: false,
                protocol_paused: false,
                high_water: DEFAULT_HIGH_WATER,
                low_water: DEFAULT_HIGH_WATER / 4.0,
                buffer: WriteBuffer::default(),
                empty_waiter: None,
            }),
        };
        core.set_protocol(&protocol)?;
        Ok(core)
    }

    // ----- reading -----------------------------------------------------------

    /// The fd is readable: one read, handed to the protocol.
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let data_received = {
            let s = this.state();
            if s.conn_lost > 0 {
                return Ok(());
            }
            match &s.receiver {
                Some(Receiver::DataReceived(f)) => f.clone_ref(py),
                Some(Receiver::LookUp) => match &s.protocol {
                    Some(p) => p.clone_ref(py),
                    None => return Ok(()),
                },
                Some(Receiver::Buffered { get_buffer, buffer_updated }) => {
                    let (g, b) = (get_buffer.clone_ref(py), buffer_updated.clone_ref(py));
                    drop(s);
                    return Self::read_into_protocol_buffer(slf, g, b);
                }
                None => return Ok(()),
            }
        };
        let received = socket_io::with_read_buffer(MAX_READ, |buf| {
            socket_io::recv(this.fd, buf).map(|n| (n > 0).then(|| PyBytes::new(py, &buf[..n])))
        });
        match received {
            Ok(Some(data)) => match this.deliver(py, data_received, data) {
                Ok(_) => Ok(()),
                Err(e) => this.fatal_error(py, e, "Fatal error: protocol.data_received() call failed."),
            },
            Ok(None) => Self::on_eof(slf),
            Err(e) if would_block(&e) => Ok(()),
            Err(e) => this.fatal_error(py, os_error(e), "Fatal read error on socket transport"),
        }
    }

    /// Start reading once `connection_made` has run (scheduled by the
    /// transport's constructor, as asyncio does).
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        if !slf.get().state().is_reading() {
            return Ok(());
        }
        Self::watch(slf, false)
    }

    fn is_reading(&self) -> bool {
        self.state().is_reading()
    }

    fn pause_reading(&self, py: Python<'_>) -> PyResult<()> {
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

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut s = slf.get().state();
            if s.closing || !s.paused {
                return Ok(());
            }
            s.paused = false;
        }
        Self::_start_reading(slf)?;
        slf.get().debug_log(py, "%r resumes reading")
    }

    // ----- writing -----------------------------------------------------------

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let chunk = chunk_of(data, false)?;
        if !slf.get().accept_write(slf.py(), "write")? || chunk.as_ref().is_empty() {
            return Ok(());
        }
        Self::send_or_queue(slf, vec![chunk])
    }

    /// Python 3.12+'s `writelines` (earlier versions join and `write()`):
    /// the chunks go out in one vectored send.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut chunks = Vec::new();
        for data in list_of_data.try_iter()? {
            let chunk = chunk_of(&data?, true)?;
            if !chunk.as_ref().is_empty() {
                chunks.push(chunk);
            }
        }
        if !slf.get().accept_write(slf.py(), "writelines")? || chunks.is_empty() {
            return Ok(());
        }
        Self::send_or_queue(slf, chunks)
    }

    /// The fd is writable: send what is queued, in one vectored send.
    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let result = {
            let s = this.state();
            if s.conn_lost > 0 || s.buffer.is_empty() {
                return Ok(());
            }
            let mut slices = Vec::new();
            s.buffer.io_slices(&mut slices);
            socket_io::send_vectored(this.fd, &slices)
        };
        let n = match result {
            Ok(n) => n,
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => {
                this.unwatch(py, true)?;
                let (dropped, waiter) = {
                    let mut s = this.state();
                    (s.buffer.take(), s.empty_waiter.as_ref().map(|w| w.clone_ref(py)))
                };
                drop(dropped);
                let exc = os_error(e).into_value(py);
                this.fatal_error(py, PyErr::from_value(exc.bind(py).clone().into_any()), "Fatal write error on socket transport")?;
                if let Some(w) = waiter {
                    w.bind(py).call_method1(pyo3::intern!(py, "set_exception"), (exc,))?;
                }
                return Ok(());
            }
        };
        let done = this.state().buffer.consume(n);
        drop(done);
        this.maybe_resume_protocol(py)?;
        let (empty, waiter, closing, eof) = {
            let s = this.state();
            (s.buffer.is_empty(), s.empty_waiter.as_ref().map(|w| w.clone_ref(py)), s.closing, s.eof)
        };
        if !empty {
            return Ok(());
        }
        this.unwatch(py, true)?;
        if let Some(w) = waiter {
            w.bind(py).call_method1(pyo3::intern!(py, "set_result"), (py.None(),))?;
        }
        if closing {
            if let Some(t) = this.handles(py).transport {
                t.call_method1(pyo3::intern!(py, "_call_connection_lost"), (py.None(),))?;
            }
        } else if eof {
            socket_io::shutdown_write(this.fd).map_err(os_error)?;
        }
        Ok(())
    }

    fn write_eof(&self) -> PyResult<()> {
        let mut s = self.state();
        if s.closing || s.eof {
            return Ok(());
        }
        s.eof = true;
        if s.buffer.is_empty() {
            drop(s);
            socket_io::shutdown_write(self.fd).map_err(os_error)?;
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn get_write_buffer_size(&self) -> usize {
        self.state().buffer.len()
    }

    /// The water marks `set_write_buffer_limits` worked out (in Python, with
    /// asyncio's own arithmetic); applied at once, as asyncio does.
    fn _set_water_marks(&self, py: Python<'_>, high: f64, low: f64) -> PyResult<()> {
        {
            let mut s = self.state();
            s.high_water = high;
            s.low_water = low;
        }
        self.maybe_pause_protocol(py)
    }

    // ----- closing -------------------------------------------------------------

    fn is_closing(&self) -> bool {
        self.state().closing
    }

    /// Stop reading; once the queued data is sent, the connection is lost.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let drained = {
            let mut s = this.state();
            if s.closing {
                return Ok(());
            }
            s.closing = true;
            s.buffer.is_empty()
        };
        this.unwatch(py, false)?;
        if drained {
            this.state().conn_lost += 1;
            this.unwatch(py, true)?;
            this.schedule_connection_lost(py, None)?;
        }
        Ok(())
    }

    /// Drop the queued data and lose the connection now.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self.force_close(py, None)
    }

    #[pyo3(signature = (exc))]
    fn _force_close(&self, py: Python<'_>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        self.force_close(py, exc)
    }

    /// After `connection_lost`: drop every reference but the fd number.
    fn _release(&self) {
        let taken = {
            let mut s = self.state();
            (s.loop_.take(), s.transport.take(), s.sock.take(), s.protocol.take(), s.receiver.take(), s.buffer.take())
        };
        drop(taken);
    }

    // ----- protocol ------------------------------------------------------------

    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = protocol.py();
        let buffered = protocol.is_instance(&py.import("asyncio")?.getattr(pyo3::intern!(py, "BufferedProtocol"))?)?;
        let receiver = if buffered {
            Receiver::Buffered {
                get_buffer: protocol.getattr(pyo3::intern!(py, "get_buffer"))?.unbind(),
                buffer_updated: protocol.getattr(pyo3::intern!(py, "buffer_updated"))?.unbind(),
            }
        } else {
            match protocol.getattr(pyo3::intern!(py, "data_received")) {
                Ok(f) => Receiver::DataReceived(f.unbind()),
                Err(_) => Receiver::LookUp,
            }
        };
        let previous = {
            let mut s = self.state();
            s.protocol_connected = true;
            (s.protocol.replace(protocol.clone().unbind()), s.receiver.replace(receiver))
        };
        drop(previous);
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state().protocol.as_ref().map(|p| p.clone_ref(py))
    }

    // ----- sendfile ------------------------------------------------------------

    /// A future done once the write buffer is empty (`loop.sendfile` waits
    /// for it before sending from the file itself).
    fn _make_empty_waiter(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let lp = {
            let s = self.state();
            if s.empty_waiter.is_some() {
                return Err(PyRuntimeError::new_err("Empty waiter is already set"));
            }
            s.loop_.as_ref().map(|l| l.clone_ref(py))
        };
        let lp = lp.ok_or_else(|| PyRuntimeError::new_err("Transport is closed"))?;
        let waiter = lp.bind(py).call_method0(pyo3::intern!(py, "create_future"))?;
        let empty = {
            let mut s = self.state();
            s.empty_waiter = Some(waiter.clone().unbind());
            s.buffer.is_empty()
        };
        if empty {
            waiter.call_method1(pyo3::intern!(py, "set_result"), (py.None(),))?;
        }
        Ok(waiter.unbind())
    }

    fn _reset_empty_waiter(&self) {
        let previous = self.state().empty_waiter.take();
        drop(previous);
    }

    // ----- state, for the Python side ------------------------------------------

    #[getter(_empty_waiter)]
    fn attr_empty_waiter(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state().empty_waiter.as_ref().map(|w| w.clone_ref(py))
    }

    #[getter(_protocol_connected)]
    fn attr_protocol_connected(&self) -> bool {
        self.state().protocol_connected
    }

    #[getter(_protocol_paused)]
    fn attr_protocol_paused(&self) -> bool {
        self.state().protocol_paused
    }

    #[getter(_conn_lost)]
    fn attr_conn_lost(&self) -> u32 {
        self.state().conn_lost
    }

    #[getter(_eof)]
    fn attr_eof(&self) -> bool {
        self.state().eof
    }

    #[getter(_paused)]
    fn attr_paused(&self) -> bool {
        self.state().paused
    }

    // ----- garbage collection ----------------------------------------------------

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Never blocks: a held lock means we are mid-update, and skipping the
        // visit only keeps objects alive a collection longer.
        let Ok(s) = self.state.try_lock() else { return Ok(()) };
        visit.call(&s.loop_)?;
        visit.call(&s.transport)?;
        visit.call(&s.sock)?;
        visit.call(&s.protocol)?;
        visit.call(&s.empty_waiter)?;
        match &s.receiver {
            Some(Receiver::DataReceived(f)) => visit.call(f)?,
            Some(Receiver::LookUp) | None => {}
            Some(Receiver::Buffered { get_buffer, buffer_updated }) => {
                visit.call(get_buffer)?;
                visit.call(buffer_updated)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self.state.try_lock().ok().map(|mut s| {
            (s.loop_.take(), s.transport.take(), s.sock.take(), s.protocol.take(), s.receiver.take(), s.empty_waiter.take())
        });
        drop(taken);
    }
}
