//! The accept path of servers: every connection queued on a listening
//! socket, taken in one call as the socket objects and peer addresses that
//! `sock.accept()` makes, without its Python frames and without the
//! BlockingIOError that ends each of asyncio's accept batches.
//! `ferroloop/_server.py` makes each one's protocol and transport.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::RawFd;

use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use crate::sockaddr;
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
    let then = match take_connections(sock, backlog, &accepted)? {
        Stop::Done => py.None().into_bound(py),
        Stop::HandOver => pyo3::types::PyBool::new(py, true).to_owned().into_any(),
        Stop::Raise(e) => e.into_value(py).into_bound(py).into_any(),
    };
    Ok((accepted, then))
}

fn take_connections(sock: &Bound<'_, PyAny>, backlog: &Bound<'_, PyAny>, accepted: &Bound<'_, PyList>) -> PyResult<Stop> {
    let py = sock.py();
    let socket_type = crate::sock_ops::socket_type(py)?.bind(py);
    let Ok(backlog) = backlog.extract::<isize>() else { return Ok(Stop::HandOver) };
    if !sock.get_type().is(socket_type) {
        return Ok(Stop::HandOver);
    }
    let SocketKind { family, kind, proto } = socket_io::socket_kind(sock)?;
    if !sockaddr::FAMILIES.contains(&family) {
        return Ok(Stop::HandOver);
    }
    let fd: RawFd = sock.call_method0(pyo3::intern!(py, "fileno"))?.extract()?;
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
        let conn = match socket_type.call1((family, kind | libc::SOCK_NONBLOCK, proto, conn_fd)) {
            Ok(conn) => conn,
            Err(e) => {
                close_fd(conn_fd);
                return Ok(Stop::Raise(e));
            }
        };
        match sockaddr::python_address(py, &storage, len).and_then(|addr| PyTuple::new(py, [conn.clone(), addr])) {
            Ok(entry) => accepted.append(entry)?,
            Err(e) => {
                conn.call_method0(pyo3::intern!(py, "close"))?;
                return Ok(Stop::Raise(e));
            }
        }
    }
    Ok(Stop::Done)
}
