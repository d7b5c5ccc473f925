//! `socket.socket` objects made and closed without the Python frames of
//! `socket.__init__` and `socket.close`, for the sockets of accepted
//! connections: each frame cost more than a kilobyte of instructions per
//! connection. What those methods do is done here through the C type
//! `_socket.socket`, but only while `socket.socket`'s methods are still
//! the socket module's own, as they were when ferroloop was imported (a
//! test may replace them for a while); otherwise they are called.

use std::os::fd::RawFd;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyType};

use crate::pyhelpers::{self, UnchangedMethods};
use crate::transport::socket_io::os_error;

/// `socket.socket`, its methods as the module defined them and its slots
/// `_io_refs` and `_closed`; `_socket.socket`'s `__init__` and `detach`.
struct PlainSocket {
    type_: Py<PyAny>,
    init: Py<PyAny>,
    close: Py<PyAny>,
    real_close: Py<PyAny>,
    io_refs: Py<PyAny>,
    closed: Py<PyAny>,
    c_init: Py<PyAny>,
    c_detach: Py<PyAny>,
}

static PLAIN_SOCKET: PyOnceLock<PlainSocket> = PyOnceLock::new();

/// Take the socket module's methods when ferroloop is imported.
pub fn init(py: Python<'_>) -> PyResult<()> {
    plain_socket(py).map(drop)
}

fn plain_socket(py: Python<'_>) -> PyResult<&PlainSocket> {
    PLAIN_SOCKET.get_or_try_init(py, || {
        let type_ = crate::sock_ops::socket_type(py)?.bind(py).clone();
        let c_type = py.import("_socket")?.getattr("socket")?;
        let slots = type_.getattr("__dict__")?;
        Ok::<_, PyErr>(PlainSocket {
            init: type_.getattr("__init__")?.unbind(),
            close: type_.getattr("close")?.unbind(),
            real_close: type_.getattr("_real_close")?.unbind(),
            io_refs: slots.get_item("_io_refs")?.unbind(),
            closed: slots.get_item("_closed")?.unbind(),
            c_init: c_type.getattr("__init__")?.unbind(),
            c_detach: c_type.getattr("detach")?.unbind(),
            type_: type_.unbind(),
        })
    })
}

/// Whether `socket.socket.__init__`, and `close` and `_real_close`, are
/// still the module's own (asked again only once the class changed).
static INIT_UNCHANGED: UnchangedMethods = UnchangedMethods::new();
static CLOSE_UNCHANGED: UnchangedMethods = UnchangedMethods::new();

/// A maker of `socket.socket(family, type, proto, fileno)` objects, for a
/// batch of accepted connections (the check of `__init__` is made once).
pub struct SocketMaker<'py> {
    plain: &'py PlainSocket,
    type_: Bound<'py, PyAny>,
    direct: bool,
}

impl<'py> SocketMaker<'py> {
    pub fn new(py: Python<'py>) -> PyResult<Self> {
        let plain = plain_socket(py)?;
        let type_ = plain.type_.bind(py).clone();
        let direct = INIT_UNCHANGED.hold(type_.cast()?, &[(intern!(py, "__init__"), &plain.init)])?;
        Ok(SocketMaker { plain, type_, direct })
    }

    /// `socket.socket(family, kind, proto, fd)`; by `socket.__init__`'s own
    /// steps when it is the module's: `_socket.socket.__init__`, then
    /// `_io_refs = 0` and `_closed = False`.
    pub fn make(&self, family: i32, kind: i32, proto: i32, fd: i32) -> PyResult<Bound<'py, PyAny>> {
        let py = self.type_.py();
        if !self.direct {
            return self.type_.call1((family, kind, proto, fd));
        }
        let sock = pyhelpers::new_object(self.type_.cast::<PyType>()?)?;
        self.plain.c_init.bind(py).call1((&sock, family, kind, proto, fd))?;
        pyhelpers::descriptor_set(self.plain.io_refs.bind(py), &sock, 0i32.into_pyobject(py)?.as_any())?;
        pyhelpers::descriptor_set(self.plain.closed.bind(py), &sock, &PyBool::new(py, false))?;
        Ok(sock)
    }
}

/// `sock.close()`; for a plain socket whose `close` and `_real_close` are
/// the module's, by their steps: `_closed = True`, then, with no file
/// objects left open on it (`_io_refs <= 0`), `_socket.socket.close`
/// ([`close_fd`]).
pub fn close(sock: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = sock.py();
    let plain = plain_socket(py)?;
    let type_ = sock.get_type();
    let direct = type_.is(plain.type_.bind(py))
        && CLOSE_UNCHANGED.hold(&type_, &[(intern!(py, "close"), &plain.close), (intern!(py, "_real_close"), &plain.real_close)])?;
    if !direct {
        return sock.call_method0(intern!(py, "close")).map(drop);
    }
    pyhelpers::descriptor_set(plain.closed.bind(py), sock, &PyBool::new(py, true))?;
    let io_refs = pyhelpers::descriptor_get(plain.io_refs.bind(py), sock)?;
    let unused = match io_refs.extract::<i64>() {
        Ok(n) => n <= 0,
        Err(_) => io_refs.le(0)?,
    };
    if unused {
        close_fd(plain, sock)?;
        forget_closed(sock);
    }
    Ok(())
}

/// A plain socket closed by [`close`] holds nothing but an int and a bool
/// (its slots; it has no `__dict__`), so it can be in no reference cycle:
/// the cycle collector need not look at it any more. A server connection's
/// socket usually dies as garbage of its protocol's cycle, with the
/// transport; it is then freed with the transport's extra info instead of
/// being traversed by each collection first.
fn forget_closed(sock: &Bound<'_, PyAny>) {
    pyhelpers::untrack(sock.as_unbound());
}

/// `_socket.socket.close(sock)`: the object gives up its fd (`detach`),
/// which is closed, an ECONNRESET ignored. The C method releases the GIL
/// around close(2), which blocks only when the program set a lingering
/// close; ferroloop keeps the GIL outside its poll.
fn close_fd(plain: &PlainSocket, sock: &Bound<'_, PyAny>) -> PyResult<()> {
    let fd: RawFd = plain.c_detach.bind(sock.py()).call1((sock,))?.extract()?;
    if fd < 0 {
        return Ok(()); // (closed already)
    }
    // SAFETY: `detach` handed the fd over; no object refers to it any more.
    if unsafe { libc::close(fd) } < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ECONNRESET) {
            return Err(os_error(e));
        }
    }
    Ok(())
}
