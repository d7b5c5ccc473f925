//! `loop.sock_recv`, `sock_recv_into` and `sock_sendall` on plain sockets:
//! the first attempt, and when the socket is not ready, the future and the
//! fd callback that completes it. This is asyncio's selector-loop logic step
//! for step (same registrations, same done-callback cleanup), minus its
//! Python frames and the BlockingIOError raised and caught per wait.
//! `ferroloop/_sock.py` wraps these in the coroutines users await; anything
//! but a plain `socket.socket`, and debug mode, take asyncio's own code.

use std::os::fd::RawFd;
use std::sync::Mutex;

use pyo3::buffer::PyBuffer;
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyInt};

use crate::event_loop::{self, LoopCore};
use crate::handles::Handle;
use crate::transport::base::must_propagate;
use crate::transport::socket_io::{self, os_error, would_block};

/// What `sock_sendall` sends: a `bytes`, or a view of the caller's buffer
/// held (so exported, not resizable) until the send is over, as asyncio's
/// memoryview is.
enum SendData {
    Bytes(PyBackedBytes),
    View(PyBuffer<u8>),
}

impl SendData {
    fn len(&self) -> usize {
        match self {
            SendData::Bytes(b) => b.len(),
            SendData::View(v) => v.len_bytes(),
        }
    }

    fn send(&self, fd: RawFd, offset: usize) -> std::io::Result<usize> {
        match self {
            SendData::Bytes(b) => socket_io::send(fd, &b[offset..]),
            SendData::View(v) => socket_io::send_from_view(fd, v, offset),
        }
    }
}

/// One socket operation, with what it has done so far.
enum Op {
    Recv { nbytes: usize },
    RecvInto { buf: Py<PyAny> },
    SendAll { data: SendData, sent: usize },
}

/// The outcome of one attempt.
enum Attempt {
    Done(Py<PyAny>),
    NotReady,
    Failed(PyErr),
}

impl Op {
    fn attempt(&mut self, py: Python<'_>, fd: RawFd, sock: &Bound<'_, PyAny>) -> Attempt {
        let io = |r: std::io::Result<Py<PyAny>>| match r {
            Ok(v) => Attempt::Done(v),
            Err(e) if would_block(&e) => Attempt::NotReady,
            Err(e) => Attempt::Failed(os_error(e)),
        };
        match self {
            // The socket module makes no call for zero bytes.
            Op::Recv { nbytes: 0 } => Attempt::Done(PyBytes::new(py, b"").into_any().unbind()),
            Op::Recv { nbytes } => io(socket_io::with_read_buffer(*nbytes, |buf| {
                socket_io::recv(fd, buf).map(|n| PyBytes::new(py, &buf[..n]).into_any().unbind())
            })),
            Op::RecvInto { buf } => match socket_io::recv_into_object(fd, buf.bind(py)) {
                Some(r) => io(r.map(|n| n.into_pyobject(py).unwrap_or_else(|never| match never {}).into_any().unbind())),
                // Not a plain writable byte buffer: the socket module
                // accepts it or raises what it raises.
                None => match sock.call_method1(pyo3::intern!(py, "recv_into"), (buf.bind(py),)) {
                    Ok(n) => Attempt::Done(n.unbind()),
                    Err(e) if socket_io::is_retry(py, &e) => Attempt::NotReady,
                    Err(e) => Attempt::Failed(e),
                },
            },
            Op::SendAll { data, sent } => match data.send(fd, *sent) {
                Ok(n) => {
                    *sent += n;
                    if *sent == data.len() {
                        Attempt::Done(py.None())
                    } else {
                        Attempt::NotReady
                    }
                }
                Err(e) if would_block(&e) => Attempt::NotReady,
                Err(e) => Attempt::Failed(os_error(e)),
            },
        }
    }

    fn writable(&self) -> bool {
        matches!(self, Op::SendAll { .. })
    }
}

struct WaitState {
    op: Op,
    future: Option<Py<PyAny>>,
    /// The fd callback, to tell at cleanup whether it was replaced.
    handle: Option<Py<Handle>>,
}

/// A socket operation waiting for its fd: `_ready` is the fd callback,
/// `_done` the future's done callback (asyncio's `_sock_read_done` /
/// `_sock_write_done`).
#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct SockWait {
    loop_: Py<LoopCore>,
    sock: Py<PyAny>,
    fd: RawFd,
    state: Mutex<WaitState>,
}

impl SockWait {
    fn state(&self) -> std::sync::MutexGuard<'_, WaitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl SockWait {
    fn _ready(&self, py: Python<'_>) -> PyResult<()> {
        let Some(future) = self.state().future.as_ref().map(|f| f.clone_ref(py)) else { return Ok(()) };
        let future = future.into_bound(py);
        // A cancellation may have been scheduled in an earlier iteration.
        if future.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
            return Ok(());
        }
        let attempt = {
            let mut s = self.state();
            s.op.attempt(py, self.fd, self.sock.bind(py))
        };
        // Polled for one event at a time: ask for the next one. If the fd
        // cannot be (it was closed meanwhile), the wait fails.
        let attempt = match attempt {
            Attempt::NotReady => match event_loop::rearm_fd(self.loop_.bind(py), self.fd) {
                Ok(()) => Attempt::NotReady,
                Err(e) => Attempt::Failed(e),
            },
            other => other,
        };
        match attempt {
            Attempt::Done(v) => future.call_method1(pyo3::intern!(py, "set_result"), (v,)).map(drop),
            Attempt::NotReady => Ok(()),
            Attempt::Failed(e) if must_propagate(py, &e) => Err(e),
            Attempt::Failed(e) => future.call_method1(pyo3::intern!(py, "set_exception"), (e.into_value(py),)).map(drop),
        }
    }

    fn _done(&self, py: Python<'_>, _future: Bound<'_, PyAny>) -> PyResult<()> {
        let (handle, future, writable) = {
            let mut s = self.state();
            (s.handle.take(), s.future.take(), s.op.writable())
        };
        drop(future);
        let replaced = handle.as_ref().is_some_and(|h| h.get().is_cancelled());
        drop(handle);
        if !replaced {
            event_loop::unwatch_fd(self.loop_.bind(py), self.fd, writable)?;
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.loop_)?;
        visit.call(&self.sock)?;
        if let Ok(s) = self.state.try_lock() {
            visit.call(&s.future)?;
            if let Op::RecvInto { buf } = &s.op {
                visit.call(buf)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self.state.try_lock().ok().map(|mut s| (s.future.take(), s.handle.take()));
        drop(taken);
    }
}

/// Try `op` now; if the socket is not ready, return a future that the fd
/// callback completes (asyncio: `fut = create_future(); _add_reader(...);
/// fut.add_done_callback(partial(_sock_read_done, fd, handle=handle))`).
fn start(lp: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, mut op: Op) -> PyResult<Py<PyAny>> {
    let py = lp.py();
    let fd: RawFd = sock.call_method0(pyo3::intern!(py, "fileno"))?.extract()?;
    match op.attempt(py, fd, sock) {
        Attempt::Done(v) => return Ok(v),
        Attempt::Failed(e) => return Err(e),
        Attempt::NotReady => {}
    }
    let future = event_loop::new_future(lp)?;
    ensure_no_transport(lp, fd)?;
    let writable = op.writable();
    let wait = Bound::new(py, SockWait {
        loop_: lp.clone().unbind(),
        sock: sock.clone().unbind(),
        fd,
        state: Mutex::new(WaitState { op, future: Some(future.clone().unbind()), handle: None }),
    })?;
    let handle = event_loop::watch_fd_once(lp, fd, writable, wait.getattr(pyo3::intern!(py, "_ready"))?)?;
    wait.get().state().handle = Some(handle);
    future.call_method1(pyo3::intern!(py, "add_done_callback"), (wait.getattr(pyo3::intern!(py, "_done"))?,))?;
    Ok(future.unbind())
}

/// asyncio's `_ensure_fd_no_transport`, asked only when a transport is
/// registered for the fd (a dict lookup otherwise).
fn ensure_no_transport(lp: &Bound<'_, LoopCore>, fd: RawFd) -> PyResult<()> {
    let py = lp.py();
    let registered = lp.getattr(pyo3::intern!(py, "_transports"))?.getattr(pyo3::intern!(py, "data"))?.contains(fd)?;
    if registered {
        lp.call_method1(pyo3::intern!(py, "_ensure_fd_no_transport"), (fd,))?;
    }
    Ok(())
}

static SOCKET_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Take `socket.socket` when the module is imported: tests replace it with
/// a factory function for a while, and the fast path would stay off.
pub fn init(py: Python<'_>) -> PyResult<()> {
    socket_type(py).map(drop)
}

pub(crate) fn socket_type(py: Python<'_>) -> PyResult<&Py<PyAny>> {
    SOCKET_TYPE.get_or_try_init(py, || Ok::<_, PyErr>(py.import("socket")?.getattr("socket")?.unbind()))
}

/// A plain `socket.socket` (not a subclass such as SSLSocket, whose
/// methods asyncio's own code must call) on a loop not in debug mode.
fn fast_path(lp: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = lp.py();
    Ok(!lp.get().debug() && sock.get_type().is(socket_type(py)?.bind(py)))
}

/// The standard loop's coroutine, for what the fast path does not take.
fn standard<'py>(lp: &Bound<'py, LoopCore>, method: &str, args: (&Bound<'py, PyAny>, &Bound<'py, PyAny>)) -> PyResult<Py<PyAny>> {
    let py = lp.py();
    let standard = py.import("ferroloop._sock")?.getattr(pyo3::intern!(py, "STANDARD"))?;
    Ok(standard.getattr(method)?.call1((lp, args.0, args.1))?.unbind())
}

/// `sock.recv(nbytes)` now (the bytes), or a future for them.
#[pyfunction]
pub fn sock_recv(lp: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, nbytes: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    match nbytes.cast::<PyInt>().ok().and_then(|n| n.extract::<usize>().ok()) {
        // More than the shared read buffer holds goes to asyncio's coroutine,
        // whose `sock.recv(n)` allocates as CPython does (MemoryError where
        // an allocation here would abort).
        Some(n) if n <= socket_io::SHARED_READ_BUFFER && fast_path(lp, sock)? => start(lp, sock, Op::Recv { nbytes: n }),
        _ => standard(lp, "sock_recv", (sock, nbytes)),
    }
}

/// `sock.recv_into(buf)` now (the count), or a future for it.
#[pyfunction]
pub fn sock_recv_into(lp: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, buf: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    if !fast_path(lp, sock)? {
        return standard(lp, "sock_recv_into", (sock, buf));
    }
    start(lp, sock, Op::RecvInto { buf: buf.clone().unbind() })
}

/// Send `data` now (None when all went), or a future for the rest.
#[pyfunction]
pub fn sock_sendall(lp: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let payload = match data.cast::<PyBytes>() {
        Ok(b) => SendData::Bytes(PyBackedBytes::from(b.clone())),
        Err(_) => match PyBuffer::<u8>::get(data) {
            Ok(view) if view.is_c_contiguous() && fast_path(lp, sock)? => SendData::View(view),
            _ => return standard(lp, "sock_sendall", (sock, data)),
        },
    };
    if !fast_path(lp, sock)? {
        return standard(lp, "sock_sendall", (sock, data));
    }
    start(lp, sock, Op::SendAll { data: payload, sent: 0 })
}
