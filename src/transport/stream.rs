//! The stream transport of TCP and Unix sockets: one implementation for
//! both, as asyncio's `_SelectorSocketTransport`, step for step.
//!
//! `StreamTransportCore` runs the hot paths: the read (`recv` into a reused
//! buffer, one `bytes` per read, or straight into a `BufferedProtocol`'s
//! buffer, a TLS protocol's BIO or asyncio's `StreamReader`), `write` (sent
//! at once, only the remainder queued, queued chunks sent with one vectored
//! send), EOF and sendfile's empty-buffer waiter; the
//! state machine shared with the datagram transport is [`Core`]. The
//! Python object users see is `ferroloop._stream.SocketTransport` (an
//! `asyncio.Transport`), which binds these methods as its own and keeps the
//! cold parts: repr, `__del__` and error reports.
//!
//! The fd is watched through the loop's own `_add_reader`/`_add_writer`
//! handles, so callback order, contexts and debug mode are the loop's.

use std::os::fd::RawFd;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyTypeError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyType};

use super::base::{not_bytes_like, released_error, Core, KindState, WriteQueue};
use super::socket_io::{self, os_error, would_block};
use super::stream_reader;
use super::write_buffer::WriteBuffer;
use crate::tls::protocol::SSLProtocolCore;

static BUFFERED_PROTOCOL: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// asyncio's `max_size`: the most one read asks for.
const MAX_READ: usize = 256 * 1024;

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

impl WriteQueue for WriteBuffer<Chunk> {
    fn size(&self) -> usize {
        self.len()
    }
}

/// How the protocol takes data: asyncio picks one at `set_protocol`. The
/// protocol's methods are looked up at each read, as asyncio does: a
/// protocol may rebind them on itself meanwhile.
enum Receiver {
    DataReceived,
    /// `get_buffer` / `buffer_updated` (an `asyncio.BufferedProtocol`).
    Buffered,
    /// ferroloop's TLS protocol: the bytes go from our buffer into its BIO.
    Tls(Py<SSLProtocolCore>),
    /// asyncio's own `StreamReaderProtocol`: the bytes go from our buffer
    /// into its reader's (see [`stream_reader`]).
    StreamReader,
}

impl Receiver {
    fn clone_ref(&self, py: Python<'_>) -> Self {
        match self {
            Receiver::DataReceived => Receiver::DataReceived,
            Receiver::Buffered => Receiver::Buffered,
            Receiver::Tls(tls) => Receiver::Tls(tls.clone_ref(py)),
            Receiver::StreamReader => Receiver::StreamReader,
        }
    }
}

/// What only the stream transport keeps.
#[derive(Default)]
struct StreamState {
    receiver: Option<Receiver>,
    eof: bool,
    /// `loop.sendfile` waits on it for the write buffer to drain.
    empty_waiter: Option<Py<PyAny>>,
}

impl KindState for StreamState {
    fn release(&mut self) -> Box<dyn std::any::Any> {
        Box::new(self.receiver.take())
    }

    fn keeps_references(&self) -> bool {
        self.empty_waiter.is_some()
    }
}

#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct StreamTransportCore {
    core: Core<WriteBuffer<Chunk>, StreamState>,
}

impl StreamTransportCore {
    /// The core of a connected socket whose fd the caller has (made only by
    /// `opening::open_stream`, as `SocketTransport.__init__` does).
    /// (`known_tcp`: whether the socket is TCP, when the caller made it.)
    pub(crate) fn with_fd(loop_: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>, fd: RawFd, known_tcp: Option<bool>, transport: &Bound<'_, PyAny>, protocol: &Bound<'_, PyAny>) -> PyResult<Self> {
        let this = StreamTransportCore { core: Core::with_fd(loop_, sock, fd, transport, StreamState::default())? };
        this.store_protocol(protocol)?;
        // As asyncio's transport: no Nagle delay on TCP.
        socket_io::set_nodelay_if_tcp(sock, fd, known_tcp)?;
        Ok(this)
    }

    /// The protocol the transport calls from now on.
    fn store_protocol(&self, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = protocol.py();
        let buffered_protocol = BUFFERED_PROTOCOL.import(py, "asyncio", "BufferedProtocol")?;
        let buffered = protocol.is_instance(buffered_protocol)?;
        let receiver = if let Ok(tls) = protocol.cast::<SSLProtocolCore>() {
            Receiver::Tls(tls.clone().unbind())
        } else if stream_reader::is_plain_stream_protocol(protocol)? {
            Receiver::StreamReader
        } else if buffered {
            Receiver::Buffered
        } else {
            Receiver::DataReceived
        };
        let previous = {
            let mut s = self.core.state();
            s.protocol_connected = true;
            (s.protocol.replace(protocol.clone().unbind()), s.extra.receiver.replace(receiver))
        };
        drop(previous);
        Ok(())
    }

    /// Once the connection is lost: sendfile's wait for an empty buffer
    /// fails (asyncio's `_call_connection_lost` does this).
    fn connection_lost_done(&self, py: Python<'_>) -> PyResult<()> {
        let waiter = self.core.state().extra.empty_waiter.as_ref().map(|w| w.clone_ref(py).into_bound(py));
        match waiter {
            Some(w) if !w.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? => {
                let error = PyConnectionError::new_err("Connection is closed by peer");
                w.call_method1(pyo3::intern!(py, "set_exception"), (error.into_value(py),)).map(drop)
            }
            _ => Ok(()),
        }
    }

    /// What `write` and `writelines` refuse first: after `write_eof()`, and
    /// while sendfile runs.
    fn check_can_write(&self, method: &str) -> PyResult<()> {
        let s = self.core.state();
        if s.extra.eof {
            return Err(PyRuntimeError::new_err(format!("Cannot call {method}() after write_eof()")));
        }
        if s.extra.empty_waiter.is_some() {
            return Err(PyRuntimeError::new_err(format!("unable to {method}; sendfile is in progress")));
        }
        Ok(())
    }

    /// Send what can go now when nothing is queued, queue the rest, watch
    /// for writability if anything was queued, then apply flow control.
    /// (`chunks`: an array for `write`'s one chunk, so it needs no vector.)
    fn send_or_queue<C>(slf: &Bound<'_, Self>, chunks: C) -> PyResult<()>
    where
        C: AsRef<[Chunk]> + IntoIterator<Item = Chunk>,
    {
        let py = slf.py();
        let core = &slf.get().core;
        let fd = core.fd();
        if fd < 0 {
            // asyncio's `self._sock.send(data)` on its None socket (after
            // close() sent the queue and the connection was lost).
            return core.fatal_error(py, released_error("send"), "Fatal write error on socket transport");
        }
        let mut sent = 0;
        if core.state().buffer.is_empty() {
            let result = if let [chunk] = chunks.as_ref() {
                socket_io::send(fd, chunk.as_ref())
            } else {
                let slices: Vec<_> = chunks.as_ref().iter().map(|c| std::io::IoSlice::new(c.as_ref())).collect();
                socket_io::send_vectored(fd, &slices)
            };
            match result {
                Ok(n) => sent = n,
                Err(e) if would_block(&e) => {}
                Err(e) => return core.fatal_error(py, os_error(e), "Fatal write error on socket transport"),
            }
            if sent == chunks.as_ref().iter().map(|c| c.as_ref().len()).sum::<usize>() {
                return Ok(());
            }
            core.watch(slf.as_any(), true)?;
        }
        {
            let mut s = core.state();
            for chunk in chunks {
                let skip = sent.min(chunk.as_ref().len());
                sent -= skip;
                s.buffer.push(chunk, skip);
            }
        }
        core.maybe_pause_protocol(py)
    }

    fn on_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let core = &slf.get().core;
        core.debug_log(py, "%r received EOF")?;
        let Some(protocol) = core.protocol(py) else { return Ok(()) };
        let keep_open = match protocol.call_method0(pyo3::intern!(py, "eof_received")) {
            Ok(k) => k,
            Err(e) => return core.fatal_error(py, e, "Fatal error: protocol.eof_received() call failed."),
        };
        // Outside the try, as in asyncio: a failing __bool__ propagates.
        if keep_open.is_truthy()? {
            // The protocol may still write, but nothing more can be read.
            core.unwatch(py, false)
        } else {
            core.close(py)
        }
    }

    fn read_into_protocol_buffer(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let core = &slf.get().core;
        let buf = protocol.call_method1(pyo3::intern!(py, "get_buffer"), (-1,)).and_then(|b| match b.len()? {
            0 => Err(PyRuntimeError::new_err("get_buffer() returned an empty buffer")),
            _ => Ok(b),
        });
        let buf = match buf {
            Ok(b) => b,
            Err(e) => return core.fatal_error(py, e, "Fatal error: protocol.get_buffer() call failed."),
        };
        let received = match socket_io::recv_into_object(core.fd(), &buf) {
            Some(r) => r.map_err(|e| if would_block(&e) { None } else { Some(os_error(e)) }),
            // Some other kind of buffer: the socket module deals with it.
            None => match core.sock(py) {
                Some(sock) => sock
                    .call_method1(pyo3::intern!(py, "recv_into"), (&buf,))
                    .and_then(|n| n.extract::<usize>())
                    .map_err(|e| if socket_io::is_retry(py, &e) { None } else { Some(e) }),
                None => return Ok(()),
            },
        };
        match received {
            Ok(0) => Self::on_eof(slf),
            Ok(n) => match protocol.call_method1(pyo3::intern!(py, "buffer_updated"), (n,)) {
                Ok(_) => Ok(()),
                Err(e) => core.fatal_error(py, e, "Fatal error: protocol.buffer_updated() call failed."),
            },
            Err(None) => Ok(()),
            Err(Some(e)) => core.fatal_error(py, e, "Fatal read error on socket transport"),
        }
    }
}

impl StreamTransportCore {
    /// One `recv` into the shared read buffer, the bytes handed to `deliver`
    /// while they are there; `Some` with what it returned. EOF, "not ready"
    /// and read errors are dealt with here, as asyncio does, and give `None`.
    fn recv_with<T>(slf: &Bound<'_, Self>, deliver: impl FnOnce(&[u8]) -> T) -> PyResult<Option<T>> {
        let core = &slf.get().core;
        let received = socket_io::with_read_buffer(MAX_READ, |buf| {
            socket_io::recv(core.fd(), buf).map(|n| (n > 0).then(|| deliver(&buf[..n])))
        });
        match received {
            Ok(Some(delivered)) => Ok(Some(delivered)),
            Ok(None) => Self::on_eof(slf).map(|()| None),
            Err(e) if would_block(&e) => Ok(None),
            Err(e) => core.fatal_error(slf.py(), os_error(e), "Fatal read error on socket transport").map(|()| None),
        }
    }

    /// asyncio's `StreamReaderProtocol`'s read: `data_received` done in
    /// Rust, from our buffer into its reader's.
    fn read_into_stream_reader(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        match Self::recv_with(slf, |data| stream_reader::data_received(protocol, data))? {
            Some(Err(e)) => slf.get().core.fatal_error(slf.py(), e, "Fatal error: protocol.data_received() call failed."),
            _ => Ok(()),
        }
    }

    /// The TLS protocol's read: what asyncio's `get_buffer`/`recv_into`/
    /// `buffer_updated` do, with our buffer lent to its BIO instead.
    fn read_into_tls(slf: &Bound<'_, Self>, tls: &Bound<'_, SSLProtocolCore>) -> PyResult<()> {
        let fed = match Self::recv_with(slf, |data| tls.get().feed(slf.py(), data))? {
            Some(Ok(())) => SSLProtocolCore::after_feed(tls),
            Some(Err(e)) => Err(e),
            None => return Ok(()),
        };
        match fed {
            Ok(()) => Ok(()),
            Err(e) => slf.get().core.fatal_error(slf.py(), e, "Fatal error: protocol.buffer_updated() call failed."),
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
    if !for_writelines {
        return Err(not_bytes_like(data));
    }
    let type_name = data.get_type().name()?.repr()?;
    Err(PyTypeError::new_err(format!("memoryview: a bytes-like object is required, not {type_name}")))
}

/// The fd callbacks, called by the loop as Rust functions (`native_callbacks`).
pub(crate) fn read_ready(core: &Bound<'_, PyAny>) -> PyResult<()> {
    StreamTransportCore::_read_ready(core.cast()?)
}

pub(crate) fn write_ready(core: &Bound<'_, PyAny>) -> PyResult<()> {
    StreamTransportCore::_write_ready(core.cast()?)
}

super::base::transport_pymethods! {
    StreamTransportCore,

    // ----- reading -----------------------------------------------------------

    /// The fd is readable: one read, handed to the protocol.
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let core = &slf.get().core;
        let (protocol, receiver) = {
            let s = core.state();
            if s.conn_lost > 0 {
                return Ok(());
            }
            let (Some(protocol), Some(receiver)) = (&s.protocol, &s.extra.receiver) else { return Ok(()) };
            (protocol.clone_ref(py).into_bound(py), receiver.clone_ref(py))
        };
        match receiver {
            Receiver::DataReceived => {}
            Receiver::Buffered => return Self::read_into_protocol_buffer(slf, &protocol),
            Receiver::StreamReader => return Self::read_into_stream_reader(slf, &protocol),
            Receiver::Tls(tls) => return Self::read_into_tls(slf, tls.bind(py)),
        }
        let Some(data) = Self::recv_with(slf, |data| PyBytes::new(py, data))? else { return Ok(()) };
        match protocol.call_method1(pyo3::intern!(py, "data_received"), (data,)) {
            Ok(_) => Ok(()),
            Err(e) => core.fatal_error(py, e, "Fatal error: protocol.data_received() call failed."),
        }
    }

    // ----- writing -----------------------------------------------------------

    pub(crate) fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let chunk = chunk_of(data, false)?;
        let this = slf.get();
        // asyncio's order: state, nothing to write, connection lost.
        this.check_can_write("write")?;
        if chunk.as_ref().is_empty() || !this.core.writable_or_log(slf.py())? {
            return Ok(());
        }
        Self::send_or_queue(slf, [chunk])
    }

    /// Python 3.12+'s `writelines` (earlier versions join and `write()`):
    /// the chunks go out in one vectored send.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let this = slf.get();
        // The state is checked before the items are (asyncio's order).
        this.check_can_write("writelines")?;
        let mut chunks = Vec::new();
        for data in list_of_data.try_iter()? {
            let chunk = chunk_of(&data?, true)?;
            if !chunk.as_ref().is_empty() {
                chunks.push(chunk);
            }
        }
        if chunks.is_empty() || !this.core.writable_or_log(slf.py())? {
            return Ok(());
        }
        if this.core.released() {
            // asyncio's `self._loop._remove_writer` on its None loop.
            return Err(released_error("_remove_writer"));
        }
        Self::send_or_queue(slf, chunks)
    }

    /// The fd is writable: send what is queued, in one vectored send.
    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let core = &slf.get().core;
        let result = {
            let s = core.state();
            if s.conn_lost > 0 || s.buffer.is_empty() {
                return Ok(());
            }
            let mut slices = Vec::new();
            s.buffer.io_slices(&mut slices);
            socket_io::send_vectored(core.fd(), &slices)
        };
        let n = match result {
            Ok(n) => n,
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => {
                core.unwatch(py, true)?;
                let (dropped, waiter) = {
                    let mut s = core.state();
                    (s.buffer.take(), s.extra.empty_waiter.as_ref().map(|w| w.clone_ref(py)))
                };
                drop(dropped);
                let exc = os_error(e).into_value(py).into_any();
                core.fatal_error(py, PyErr::from_value(exc.bind(py).clone()), "Fatal write error on socket transport")?;
                if let Some(w) = waiter {
                    w.call_method1(py, pyo3::intern!(py, "set_exception"), (exc,))?;
                }
                return Ok(());
            }
        };
        let done = core.state().buffer.consume(n);
        drop(done);
        core.maybe_resume_protocol(py)?;
        let (empty, waiter, closing, eof) = {
            let s = core.state();
            (s.buffer.is_empty(), s.extra.empty_waiter.as_ref().map(|w| w.clone_ref(py)), s.closing, s.extra.eof)
        };
        if !empty {
            return Ok(());
        }
        core.unwatch(py, true)?;
        if let Some(w) = waiter {
            w.call_method1(py, pyo3::intern!(py, "set_result"), (py.None(),))?;
        }
        if closing {
            core.connection_lost_now(py)?;
        } else if eof {
            socket_io::shutdown_write(core.fd()).map_err(os_error)?;
        }
        Ok(())
    }

    fn write_eof(&self) -> PyResult<()> {
        let mut s = self.core.state();
        if s.closing || s.extra.eof {
            return Ok(());
        }
        s.extra.eof = true;
        if s.buffer.is_empty() {
            drop(s);
            socket_io::shutdown_write(self.core.fd()).map_err(os_error)?;
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    // ----- sendfile ------------------------------------------------------------

    /// A future done once the write buffer is empty (`loop.sendfile` waits
    /// for it before sending from the file itself).
    fn _make_empty_waiter<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if self.core.state().extra.empty_waiter.is_some() {
            return Err(PyRuntimeError::new_err("Empty waiter is already set"));
        }
        let lp = self.core.event_loop(py).ok_or_else(|| PyRuntimeError::new_err("Transport is closed"))?;
        let waiter = lp.call_method0(pyo3::intern!(py, "create_future"))?;
        let empty = {
            let mut s = self.core.state();
            s.extra.empty_waiter = Some(waiter.clone().unbind());
            s.buffer.is_empty()
        };
        if empty {
            waiter.call_method1(pyo3::intern!(py, "set_result"), (py.None(),))?;
        }
        Ok(waiter)
    }

    fn _reset_empty_waiter(&self) {
        let previous = self.core.state().extra.empty_waiter.take();
        drop(previous);
    }

    // ----- state, for the Python side ------------------------------------------

    #[getter(_empty_waiter)]
    fn attr_empty_waiter(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.core.state().extra.empty_waiter.as_ref().map(|w| w.clone_ref(py))
    }

    #[getter(_eof)]
    fn attr_eof(&self) -> bool {
        self.core.state().extra.eof
    }

    // ----- garbage collection ----------------------------------------------------

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.core.traverse(&visit, |x| {
            visit.call(&x.empty_waiter)?;
            match &x.receiver {
                Some(Receiver::Tls(tls)) => visit.call(tls),
                _ => Ok(()),
            }
        })
    }

    fn __clear__(&self) {
        self.core.clear(|x| Box::new((x.receiver.take(), x.empty_waiter.take())));
    }
}
