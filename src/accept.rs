//! The accept path of servers: every connection queued on a listening
//! socket, taken in one call as the socket objects and peer addresses that
//! `sock.accept()` makes, without its Python frames and without the
//! BlockingIOError that ends each of asyncio's accept batches. For a plain
//! TCP or Unix server ([`accept_connection`], the loop's
//! `_accept_connection`) each connection's protocol and transport are made
//! here too, by a callback; otherwise `ferroloop/_server.py` makes them.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::RawFd;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyList, PyTuple, PyType};

use crate::event_loop::{self, LoopCore};
use crate::pyhelpers::{self, UnchangedMethods};
use crate::sockaddr;
use crate::socket_object::SocketMaker;
use crate::transport::base::must_propagate;
use crate::transport::opening;
use crate::transport::socket_io::{self, SocketKind};

/// One `accept4(2)`, close-on-exec as the socket module does it and
/// already non-blocking (as asyncio then makes it), with the peer's
/// address (zeroed first, as the socket module's buffer is).
fn accept_one(fd: RawFd) -> io::Result<(RawFd, libc::sockaddr_storage, libc::socklen_t)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` is valid for writes of `len` bytes and `len` is a
    // valid in/out length; a bad fd is an error return, not UB.
    let conn = unsafe { libc::accept4(fd, storage.as_mut_ptr().cast(), &mut len, libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) };
    if conn < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised, then filled in by the kernel up to `len`.
    Ok((conn, unsafe { storage.assume_init() }, len))
}

/// Close an fd that no socket object owns yet.
fn close_fd(fd: RawFd) {
    // SAFETY: `fd` was just returned by accept4 and nothing else owns it.
    unsafe { libc::close(fd) };
}

/// What ends a batch besides an empty queue (see [`accept_connections`]).
enum Stop {
    /// Nothing: the queue is empty, or `backlog` connections were taken.
    Done,
    /// asyncio's own code must go on.
    HandOver,
    /// Making one connection's socket object failed: raise this once the
    /// connections taken before it are started.
    Raise(PyErr),
}

/// `sock.accept()` up to `backlog` times, as asyncio's `_accept_connection`
/// does, each connection non-blocking: returns `([(conn, addr), ...],
/// then)`. The batch ends early when no connection is left (or one was
/// aborted before it was taken, which asyncio also takes as the end).
/// `then` is None, or True when asyncio's own code must go on instead (the
/// socket is not a plain `socket.socket` of these families, or accept
/// failed otherwise: out of fds, a signal, ...; asyncio's code then meets
/// that again and handles it as it does), or an exception to raise once
/// the connections taken are started.
#[pyfunction]
pub fn accept_connections<'py>(sock: &Bound<'py, PyAny>, backlog: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyAny>)> {
    let py = sock.py();
    let accepted = PyList::empty(py);
    let stop = take_connections(sock, backlog, |conn, addr, _| accepted.append(PyTuple::new(py, [conn, addr])?))?;
    Ok((accepted, stop.into_then(py)))
}

/// `loop._accept_connection(protocol_factory, sock, sslcontext, server,
/// backlog, *timeouts)`, a listening socket's reader callback. For a plain
/// TCP or Unix server (no TLS, no task factory, not in debug mode, the
/// loop's own stream transport) the batch is taken here and each
/// connection's protocol and transport are made by a callback scheduled
/// for it, `open_accepted`; anything else (and a call with arguments
/// missing) is `ferroloop/_server.py`'s `accept_connection`.
pub fn accept_connection(loop_: &Bound<'_, LoopCore>, args: &Bound<'_, PyTuple>) -> PyResult<()> {
    let py = loop_.py();
    let names = server_names(py)?;
    let core = loop_.get();
    let plain = args.len() >= 5
        && !core.debug()
        && !core.has_task_factory()
        && !args.get_item(2)?.is_truthy()?
        && OWN_TRANSPORT.hold(&loop_.get_type(), &[(pyo3::intern!(py, "_make_socket_transport"), &names.make_socket_transport)])?;
    if !plain {
        let mut all = vec![loop_.clone().into_any()];
        all.extend(args.iter());
        return names.accept_connection.bind(py).call1(PyTuple::new(py, all)?).map(drop);
    }
    let (protocol_factory, sock, server, backlog) = (args.get_item(0)?, args.get_item(1)?, args.get_item(3)?, args.get_item(4)?);
    let open = OPEN_ACCEPTED.get_or_try_init(py, || Ok::<_, PyErr>(wrap_pyfunction!(open_accepted, py)?.into_any().unbind()))?;
    let mut count: isize = 0;
    let stop = take_connections(&sock, &backlog, |conn, addr, kind| {
        // (whether it is TCP, for TCP_NODELAY: the listener's kind is its)
        let tcp = PyBool::new(py, kind.is_tcp()).to_owned().into_any();
        let args = PyTuple::new(py, [loop_.clone().into_any(), protocol_factory.clone(), conn, addr, server.clone(), tcp])?;
        event_loop::call_soon(loop_, open.bind(py).clone(), args)?;
        count += 1;
        Ok(())
    })?;
    match stop {
        Stop::Done => Ok(()),
        // asyncio's method goes on with what is left of the batch.
        Stop::HandOver => {
            let mut rest = vec![loop_.clone().into_any(), protocol_factory, sock, args.get_item(2)?, server];
            rest.push(backlog.sub(count)?);
            rest.extend(args.iter().skip(5));
            names.standard_accept.bind(py).call1(PyTuple::new(py, rest)?).map(drop)
        }
        Stop::Raise(e) => Err(e),
    }
}

/// Whether the loop's class still makes its socket transports with
/// `ferroloop._stream.make_socket_transport`.
static OWN_TRANSPORT: UnchangedMethods = UnchangedMethods::new();

static OPEN_ACCEPTED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// What the accept path uses of ferroloop's Python modules and asyncio's.
struct ServerNames {
    /// `ferroloop._stream.SocketTransport` and `make_socket_transport`
    transport_type: Py<PyType>,
    make_socket_transport: Py<PyAny>,
    /// `ferroloop._server.accept_connection` and `_report_failure`
    accept_connection: Py<PyAny>,
    report_failure: Py<PyAny>,
    /// the standard loop's `_accept_connection`
    standard_accept: Py<PyAny>,
}

static SERVER_NAMES: PyOnceLock<ServerNames> = PyOnceLock::new();

fn server_names(py: Python<'_>) -> PyResult<&ServerNames> {
    SERVER_NAMES.get_or_try_init(py, || {
        let stream = py.import("ferroloop._stream")?;
        let server = py.import("ferroloop._server")?;
        Ok::<_, PyErr>(ServerNames {
            transport_type: stream.getattr("SocketTransport")?.cast_into::<PyType>()?.unbind(),
            make_socket_transport: stream.getattr("make_socket_transport")?.unbind(),
            accept_connection: server.getattr("accept_connection")?.unbind(),
            report_failure: server.getattr("_report_failure")?.unbind(),
            standard_accept: py.import("ferroloop._sock")?.getattr("STANDARD")?.getattr("_accept_connection")?.unbind(),
        })
    })
}

/// One accepted connection's protocol and transport: the task body of
/// asyncio's `_accept_connection2`, with its error handling (a failure is
/// reported in debug mode only), as `_server.open_accepted` does it. The
/// transport's Python `__init__` is skipped: it only calls what this calls.
#[pyfunction]
fn open_accepted(loop_: &Bound<'_, PyAny>, protocol_factory: &Bound<'_, PyAny>, conn: &Bound<'_, PyAny>, addr: &Bound<'_, PyAny>, server: &Bound<'_, PyAny>, tcp: bool) -> PyResult<()> {
    let py = loop_.py();
    let ServerNames { transport_type, report_failure, .. } = server_names(py)?;
    let mut protocol = None;
    let result = (|| {
        let made = protocol_factory.call0()?;
        let transport = pyhelpers::new_object(transport_type.bind(py))?;
        let extra = PyDict::new(py);
        extra.set_item(pyo3::intern!(py, "peername"), addr)?;
        let none = py.None().into_bound(py);
        opening::open_stream(&transport, loop_, conn, Some(tcp), protocol.insert(made), &none, extra.as_any(), server)
    })();
    match result {
        Err(e) if !must_propagate(py, &e) => {
            report_failure.bind(py).call1((loop_, e.into_value(py), protocol, py.None())).map(drop)
        }
        other => other,
    }
}

impl Stop {
    /// The `then` of [`accept_connections`].
    fn into_then(self, py: Python<'_>) -> Bound<'_, PyAny> {
        match self {
            Stop::Done => py.None().into_bound(py),
            Stop::HandOver => PyBool::new(py, true).to_owned().into_any(),
            Stop::Raise(e) => e.into_value(py).into_bound(py).into_any(),
        }
    }
}

/// The batch of [`accept_connections`]: `taken(conn, addr, kind)` for
/// each (`kind`: the listener's, which the connection's socket shares).
fn take_connections<'py>(sock: &Bound<'py, PyAny>, backlog: &Bound<'py, PyAny>, mut taken: impl FnMut(Bound<'py, PyAny>, Bound<'py, PyAny>, &SocketKind) -> PyResult<()>) -> PyResult<Stop> {
    let py = sock.py();
    let socket_type = crate::sock_ops::socket_type(py)?.bind(py);
    let Ok(backlog) = backlog.extract::<isize>() else { return Ok(Stop::HandOver) };
    if !sock.get_type().is(socket_type) {
        return Ok(Stop::HandOver);
    }
    let listener = socket_io::socket_kind(sock)?;
    let SocketKind { family, kind, proto } = listener;
    if !sockaddr::FAMILIES.contains(&family) {
        return Ok(Stop::HandOver);
    }
    let fd: RawFd = sock.call_method0(pyo3::intern!(py, "fileno"))?.extract()?;
    let sockets = SocketMaker::new(py)?;
    for _ in 0..backlog.max(0) {
        let (conn_fd, storage, len) = match accept_one(fd) {
            Ok(accepted) => accepted,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ECONNABORTED)) => break,
            Err(_) => return Ok(Stop::HandOver),
        };
        // `socket(self.family, self.type, self.proto, fileno=fd)`, as accept()
        // makes it, then `setblocking(False)` as asyncio does: SOCK_NONBLOCK
        // in the type tells the socket module the fd is non-blocking already
        // (timeout 0, no ioctl; `type` itself leaves the flag out).
        let conn = match sockets.make(family, kind | libc::SOCK_NONBLOCK, proto, conn_fd) {
            Ok(conn) => conn,
            Err(e) => {
                close_fd(conn_fd);
                return Ok(Stop::Raise(e));
            }
        };
        match sockaddr::python_address(py, &storage, len) {
            Ok(addr) => taken(conn, addr, &listener)?,
            Err(e) => {
                conn.call_method0(pyo3::intern!(py, "close"))?;
                return Ok(Stop::Raise(e));
            }
        }
    }
    Ok(Stop::Done)
}
