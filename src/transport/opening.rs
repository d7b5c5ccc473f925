//! What the socket transports' `__init__` do, in one call into Rust: the
//! extra info and attributes asyncio's `_SelectorTransport.__init__` sets,
//! the core, the loop's registration of the fd, the server's count
//! (`server_link`) and the first callbacks. A server makes one
//! transport per connection: as Python frames, these steps were about a
//! tenth of the instructions a short HTTP connection costs the server.

use std::os::fd::RawFd;

use pyo3::exceptions::PyOSError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use super::datagram::DatagramTransportCore;
use super::slots::{self, Slot};
use super::stream::StreamTransportCore;
use super::weak_parts::LastWeakParts;
use crate::event_loop::{self, LoopCore};
use crate::pyhelpers::UnchangedMethods;
use crate::sockaddr;

/// asyncio's names used here, taken when ferroloop is imported.
struct AsyncioNames {
    /// `asyncio.trsock.TransportSocket`, its `__init__` and its one slot, `_sock`.
    transport_socket: Py<PyType>,
    transport_socket_init: Py<PyAny>,
    transport_socket_sock: Py<PyAny>,
    /// `asyncio.futures._set_result_unless_cancelled`
    set_result: Py<PyAny>,
}

static ASYNCIO_NAMES: PyOnceLock<AsyncioNames> = PyOnceLock::new();

/// Take asyncio's names when ferroloop is imported (a test may replace
/// `TransportSocket.__init__` for a while).
pub fn init(py: Python<'_>) -> PyResult<()> {
    asyncio_names(py).map(drop)
}

fn asyncio_names(py: Python<'_>) -> PyResult<&AsyncioNames> {
    ASYNCIO_NAMES.get_or_try_init(py, || {
        let transport_socket = py.import("asyncio.trsock")?.getattr("TransportSocket")?.cast_into::<PyType>()?;
        Ok::<_, PyErr>(AsyncioNames {
            transport_socket_init: transport_socket.getattr("__init__")?.unbind(),
            transport_socket_sock: transport_socket.getattr("_sock")?.unbind(),
            transport_socket: transport_socket.unbind(),
            set_result: py.import("asyncio.futures")?.getattr("_set_result_unless_cancelled")?.unbind(),
        })
    })
}

/// `TransportSocket(sock)`; while its `__init__` is asyncio's, by that
/// method's one step (`self._sock = sock`) without its frame.
fn transport_socket<'py>(sock: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = sock.py();
    let names = asyncio_names(py)?;
    let type_ = names.transport_socket.bind(py);
    static INIT_UNCHANGED: UnchangedMethods = UnchangedMethods::new();
    if !INIT_UNCHANGED.hold(type_, &[(intern!(py, "__init__"), &names.transport_socket_init)])? {
        return type_.call1((sock,));
    }
    let wrapper = crate::pyhelpers::new_object(type_)?;
    crate::pyhelpers::descriptor_set(names.transport_socket_sock.bind(py), &wrapper, sock)?;
    Ok(wrapper)
}

/// `SocketTransport.__init__`: a TCP or Unix stream socket's transport.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn open_stream_transport(transport: &Bound<'_, PyAny>, loop_: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>, protocol: &Bound<'_, PyAny>, waiter: &Bound<'_, PyAny>, extra: &Bound<'_, PyAny>, server: &Bound<'_, PyAny>) -> PyResult<()> {
    open_stream(transport, loop_, sock, None, protocol, waiter, extra, server)
}

/// [`open_stream_transport`] (`known_tcp`: whether the socket is TCP, when
/// the caller made it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn open_stream(transport: &Bound<'_, PyAny>, loop_: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>, known_tcp: Option<bool>, protocol: &Bound<'_, PyAny>, waiter: &Bound<'_, PyAny>, extra: &Bound<'_, PyAny>, server: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = transport.py();
    let (fd, _) = init_selector_transport(transport, loop_, sock, extra)?;
    let core = Bound::new(py, StreamTransportCore::with_fd(loop_, sock, fd, known_tcp, transport, protocol)?)?;
    bind_core(transport, core.as_any(), sock)?;
    super::server_link::attach_server(transport, server)?;
    register(transport, loop_, fd)?;
    // As asyncio: connection_made first, then reading, then the waiter.
    start(transport, loop_, protocol, core.as_any(), waiter)
}

/// `DatagramTransport.__init__`: a UDP or Unix datagram socket's transport.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn open_datagram_transport(transport: &Bound<'_, PyAny>, loop_: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>, protocol: &Bound<'_, PyAny>, address: &Bound<'_, PyAny>, waiter: &Bound<'_, PyAny>, extra: &Bound<'_, PyAny>, header_bytes: usize, send_empty: bool) -> PyResult<()> {
    let py = transport.py();
    let (fd, extra) = init_selector_transport(transport, loop_, sock, extra)?;
    transport.setattr(intern!(py, "_address"), address)?;
    let connected = extra.get_item(intern!(py, "peername"))?.is_truthy()?;
    let address = (!address.is_none()).then(|| address.clone().unbind());
    let core = DatagramTransportCore::new(loop_.clone(), sock.clone(), transport.clone(), protocol.clone(), address, connected, header_bytes, send_empty)?;
    let core = Bound::new(py, core)?;
    bind_core(transport, core.as_any(), sock)?;
    register(transport, loop_, fd)?;
    start(transport, loop_, protocol, core.as_any(), waiter)
}

/// `_SelectorTransport.__init__`'s part: `_extra` with the socket, its
/// name and the peer's (None where the call fails), `_loop` and `_sock_fd`.
/// Returns the fd and `_extra`.
fn init_selector_transport<'py>(transport: &Bound<'py, PyAny>, loop_: &Bound<'py, PyAny>, sock: &Bound<'py, PyAny>, extra: &Bound<'py, PyAny>) -> PyResult<(RawFd, Bound<'py, PyAny>)> {
    let py = transport.py();
    // BaseTransport.__init__: the caller's dict itself, or a new one.
    let extra = if extra.is_none() { PyDict::new(py).into_any() } else { extra.clone() };
    slots::set(transport, Slot::Extra, &extra)?;
    extra.set_item(intern!(py, "socket"), transport_socket(sock)?)?;
    let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
    extra.set_item(intern!(py, "sockname"), none_on_os_error(py, socket_name(sock, fd))?)?;
    if !extra.contains(intern!(py, "peername"))? {
        extra.set_item(intern!(py, "peername"), none_on_os_error(py, sock.call_method0(intern!(py, "getpeername")))?)?;
    }
    slots::set(transport, Slot::Loop, loop_)?;
    slots::set(transport, Slot::SockFd, fd.into_pyobject(py)?.as_any())?;
    Ok((fd, extra))
}

/// `sock.getsockname()`: for a plain socket of the common families, made
/// here (the socket module formats IPv4 hosts with sprintf).
fn socket_name<'py>(sock: &Bound<'py, PyAny>, fd: RawFd) -> PyResult<Bound<'py, PyAny>> {
    let py = sock.py();
    if sock.get_type().is(crate::sock_ops::socket_type(py)?.bind(py)) {
        let (storage, len) = sockaddr::local_address(fd)?;
        if sockaddr::FAMILIES.contains(&(storage.ss_family as i32)) {
            return sockaddr::python_address(py, &storage, len);
        }
    }
    sock.call_method0(intern!(py, "getsockname"))
}

fn none_on_os_error<'py>(py: Python<'py>, result: PyResult<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    match result {
        Err(e) if e.is_instance_of::<PyOSError>(py) => Ok(py.None().into_bound(py)),
        other => other,
    }
}

/// The transport's core and socket.
fn bind_core(transport: &Bound<'_, PyAny>, core: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>) -> PyResult<()> {
    slots::set(transport, Slot::Core, core)?;
    slots::set(transport, Slot::Sock, sock)
}

/// `loop._transports[fd] = transport` (which add_reader and the sock_*
/// methods check, as on the standard loop), the last step of asyncio's
/// `_SelectorTransport.__init__`.
fn register(transport: &Bound<'_, PyAny>, loop_: &Bound<'_, PyAny>, fd: RawFd) -> PyResult<()> {
    let py = transport.py();
    let registry = loop_.getattr(intern!(py, "_transports"))?;
    if !register_weakly(&registry, fd, transport)? {
        registry.set_item(fd, transport)?;
    }
    Ok(())
}

/// `weakref.WeakValueDictionary`, `weakref.KeyedRef` (and its slot `key`)
/// and `weakref.ref`.
struct WeakrefNames {
    dict_type: Py<PyAny>,
    keyed_ref: Py<PyType>,
    key: Py<PyAny>,
    weak_ref: Py<PyType>,
}

static WEAKREF_NAMES: PyOnceLock<WeakrefNames> = PyOnceLock::new();

/// The loop's registry's parts (`data`, `_remove`, `_pending_removals`).
static LAST_REGISTRY: LastWeakParts = LastWeakParts::new();

/// `registry[fd] = transport` for the loop's `WeakValueDictionary`, as its
/// `__setitem__` does it (`data[key] = KeyedRef(value, self._remove, key)`)
/// but without that method's three Python frames, the costliest step of
/// making a transport. False, with nothing done, for anything else (or
/// removals pending), which then takes the dictionary's own method.
fn register_weakly(registry: &Bound<'_, PyAny>, fd: RawFd, transport: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = registry.py();
    let names = WEAKREF_NAMES.get_or_try_init(py, || {
        let weakref = py.import("weakref")?;
        let keyed_ref = weakref.getattr("KeyedRef")?.cast_into::<PyType>()?;
        Ok::<_, PyErr>(WeakrefNames {
            dict_type: weakref.getattr("WeakValueDictionary")?.unbind(),
            key: keyed_ref.getattr("__dict__")?.get_item("key")?.unbind(),
            keyed_ref: keyed_ref.unbind(),
            weak_ref: weakref.getattr("ref")?.cast_into::<PyType>()?.unbind(),
        })
    })?;
    if !registry.get_type().is(names.dict_type.bind(py)) {
        return Ok(false);
    }
    let parts = LAST_REGISTRY.of(registry)?;
    let Ok(data) = parts.data.bind(py).cast::<PyDict>() else { return Ok(false) };
    if parts.pending_removals.bind(py).is_truthy()? {
        return Ok(false);
    }
    // KeyedRef.__new__: `ref.__new__(type, ob, callback)` (here by ref's
    // slot), then `.key` (its __init__ only checks the same arguments again).
    let args = PyTuple::new(py, [transport.clone(), parts.remove.into_bound(py)])?;
    let entry = crate::pyhelpers::new_object_as(names.weak_ref.bind(py), names.keyed_ref.bind(py), &args)?;
    let fd = fd.into_pyobject(py)?;
    crate::pyhelpers::descriptor_set(names.key.bind(py), &entry, fd.as_any())?;
    data.set_item(fd, entry)?;
    Ok(true)
}

/// `connection_made`, then reading, then the waiter, each in its own callback.
fn start(transport: &Bound<'_, PyAny>, loop_: &Bound<'_, PyAny>, protocol: &Bound<'_, PyAny>, core: &Bound<'_, PyAny>, waiter: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = transport.py();
    let loop_ = loop_.cast::<LoopCore>()?;
    event_loop::call_soon(loop_, protocol.getattr(intern!(py, "connection_made"))?, PyTuple::new(py, [transport])?)?;
    event_loop::call_soon(loop_, core.getattr(intern!(py, "_start_reading"))?, PyTuple::empty(py))?;
    if !waiter.is_none() {
        let set_result = asyncio_names(py)?.set_result.bind(py).clone();
        event_loop::call_soon(loop_, set_result, PyTuple::new(py, [waiter.clone(), py.None().into_bound(py)])?)?;
    }
    Ok(())
}
