//! The socket system calls of the stream transport, on the raw fd of a
//! socket object the transport holds (so the fd stays open while in use).

use std::cell::RefCell;
use std::io::{self, IoSlice, Read};
use std::os::fd::{BorrowedFd, RawFd};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use socket2::{SockRef, Socket};

use crate::pyhelpers;

/// Reads of up to this size go through one buffer per thread.
pub const SHARED_READ_BUFFER: usize = 256 * 1024;

thread_local! {
    /// A loop reads from one socket at a time and copies out only what
    /// arrived, so one buffer serves every read of the thread.
    static READ_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` on a scratch buffer of `size` bytes (the thread's shared one when
/// it is free and large enough, else a fresh one).
pub fn with_read_buffer<T>(size: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
    READ_BUFFER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) if size <= SHARED_READ_BUFFER => {
            if buf.len() < SHARED_READ_BUFFER {
                buf.resize(SHARED_READ_BUFFER, 0);
            }
            f(&mut buf[..size])
        }
        _ => f(&mut vec![0u8; size]),
    })
}

fn with_socket<T>(fd: RawFd, f: impl FnOnce(&Socket) -> io::Result<T>) -> io::Result<T> {
    // A closed socket object reports fileno() -1: EBADF, as its methods raise.
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: the transport keeps the Python socket object that owns `fd`
    // alive and unclosed for as long as it makes these calls, and the
    // borrow does not outlive this function.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    f(&SockRef::from(&fd))
}

/// A socket object's `family`, `type` and `proto`, as ints.
pub struct SocketKind {
    pub family: i32,
    pub kind: i32,
    pub proto: i32,
}

impl SocketKind {
    /// A TCP socket as asyncio's `_set_nodelay` tells one: `proto`
    /// IPPROTO_TCP exactly (a socket made with proto 0 is left alone).
    pub fn is_tcp(&self) -> bool {
        (self.family == libc::AF_INET || self.family == libc::AF_INET6) && self.kind == libc::SOCK_STREAM && self.proto == libc::IPPROTO_TCP
    }
}

/// The C-level `family`, `type` and `proto` members of `_socket.socket`:
/// the `socket.socket` properties wrap the first two in enums, which costs
/// more than a whole accept.
static KIND_MEMBERS: PyOnceLock<[Py<PyAny>; 3]> = PyOnceLock::new();

pub fn socket_kind(sock: &Bound<'_, PyAny>) -> PyResult<SocketKind> {
    let py = sock.py();
    let [family, kind, proto] = KIND_MEMBERS.get_or_try_init(py, || {
        let members = py.import("_socket")?.getattr("socket")?.getattr("__dict__")?;
        let member = |name| members.get_item(name).map(Bound::unbind);
        Ok::<_, PyErr>([member("family")?, member("type")?, member("proto")?])
    })?;
    let get = |member: &Py<PyAny>| pyhelpers::descriptor_get(member.bind(py), sock)?.extract::<i32>();
    Ok(SocketKind { family: get(family)?, kind: get(kind)?, proto: get(proto)? })
}

/// asyncio's `base_events._set_nodelay`: TCP_NODELAY on a TCP socket
/// (`known_tcp`: whether it is one, when the caller made it).
pub fn set_nodelay_if_tcp(sock: &Bound<'_, PyAny>, fd: RawFd, known_tcp: Option<bool>) -> PyResult<()> {
    let is_tcp = match known_tcp {
        Some(tcp) => tcp,
        None => socket_kind(sock)?.is_tcp(),
    };
    if is_tcp {
        with_socket(fd, |s| s.set_tcp_nodelay(true)).map_err(os_error)?;
    }
    Ok(())
}

/// `send(2)`; MSG_NOSIGNAL so a closed peer is an EPIPE error, never a signal.
pub fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    with_socket(fd, |s| s.send_with_flags(data, libc::MSG_NOSIGNAL))
}

pub fn send_vectored(fd: RawFd, chunks: &[IoSlice<'_>]) -> io::Result<usize> {
    with_socket(fd, |s| s.send_vectored_with_flags(chunks, libc::MSG_NOSIGNAL))
}

pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    with_socket(fd, |mut s| s.read(buf))
}

pub fn send_to(fd: RawFd, data: &[u8], to: &socket2::SockAddr) -> io::Result<usize> {
    with_socket(fd, |s| s.send_to_with_flags(data, to, libc::MSG_NOSIGNAL))
}

pub fn recv_from(fd: RawFd, buf: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<(usize, socket2::SockAddr)> {
    with_socket(fd, |s| s.recv_from(buf))
}

pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    with_socket(fd, |s| s.shutdown(std::net::Shutdown::Write))
}

/// The errors asyncio's transports treat as "try again at the next event"
/// (BlockingIOError, InterruptedError).
pub fn would_block(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

/// The same, for an exception the socket module raised.
pub fn is_retry(py: Python<'_>, e: &PyErr) -> bool {
    e.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py) || e.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py)
}

/// The exception the socket module would raise: `OSError(errno, strerror)`,
/// which Python turns into its errno subclass (ConnectionResetError, ...).
pub fn os_error(e: io::Error) -> PyErr {
    match e.raw_os_error() {
        Some(errno) => {
            let text = e.to_string();
            let suffix = format!(" (os error {errno})");
            let strerror = text.strip_suffix(&suffix).unwrap_or(&text).to_owned();
            PyOSError::new_err((errno, strerror))
        }
        None => PyErr::from(e),
    }
}

/// `recv(2)` straight into a Python object's buffer (a bytearray, a
/// writable memoryview, ...); None when it is not a writable contiguous
/// byte buffer, for the caller to hand to the socket module instead.
pub fn recv_into_object(fd: RawFd, buf: &Bound<'_, PyAny>) -> Option<io::Result<usize>> {
    let view = PyBuffer::<u8>::get(buf).ok()?;
    if view.readonly() || !view.is_c_contiguous() {
        return None;
    }
    if view.len_bytes() == 0 {
        // The socket module makes no call for an empty buffer.
        return Some(Ok(0));
    }
    // SAFETY: `view` keeps the exporter's memory alive and unmoved until it
    // is dropped at the end of this function; it is writable and contiguous
    // (checked above), `len_bytes` long; no Python code runs while the slice
    // is in use, so nothing else touches the memory meanwhile.
    let slice = unsafe { std::slice::from_raw_parts_mut(view.buf_ptr() as *mut u8, view.len_bytes()) };
    Some(recv(fd, slice))
}

/// `send(2)` of a Python buffer's bytes from `offset` on, read in place:
/// as asyncio sends from a memoryview of the caller's object, a change the
/// caller makes to the unsent part is what goes out.
pub fn send_from_view(fd: RawFd, view: &PyBuffer<u8>, offset: usize) -> io::Result<usize> {
    debug_assert!(view.is_c_contiguous());
    // SAFETY: `view` holds the exporter's buffer (which cannot be resized or
    // freed while exported), contiguous (checked by the caller when it took
    // the view), `len_bytes` long; the GIL is held and no Python code runs
    // during the call, so nothing writes to the memory meanwhile.
    let all = unsafe { std::slice::from_raw_parts(view.buf_ptr() as *const u8, view.len_bytes()) };
    send(fd, &all[offset.min(all.len())..])
}

// ----- raw fds (pipes, FIFOs, character devices) ------------------------------

/// What a `read`/`write`/`writev` call returned, as `io::Result`.
fn fd_result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `read(2)`, as `os.read` on a pipe's fd (no socket semantics: pipes,
/// FIFOs and character devices are not sockets, and sockets read the same).
pub fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole
    // call. A closed or reused fd number is an error or a logic bug of the
    // caller (the transport keeps its pipe open while it calls this), never
    // a memory-safety issue.
    fd_result(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// `write(2)`, as `os.write`. A closed reader is EPIPE: Python ignores SIGPIPE.
pub fn write_fd(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is valid for reads of `data.len()` bytes for the call.
    fd_result(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) })
}

/// `writev(2)`: the queued chunks of a pipe in one call.
pub fn write_vectored_fd(fd: RawFd, chunks: &[IoSlice<'_>]) -> io::Result<usize> {
    let count = chunks.len().min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: `IoSlice` is guaranteed ABI-compatible with `iovec` on Unix,
    // and the slices (and the memory they point to) outlive the call.
    fd_result(unsafe { libc::writev(fd, chunks.as_ptr().cast::<libc::iovec>(), count) })
}
