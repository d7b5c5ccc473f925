//! A server-side transport's place in its `asyncio.Server`'s count of
//! connections, which `wait_closed` (and from 3.13 `close_clients`) rely
//! on: `Server._attach` when the transport is made, `_detach` when its
//! connection is lost. For asyncio's own `Server` with its own methods,
//! their steps are done here without their Python frames (two per
//! connection); a subclass or a replaced method is called.

use std::sync::OnceLock;

use pyo3::exceptions::PyAssertionError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyInt, PyString, PyType};

use super::slots::{self, Slot};
use crate::pyhelpers::UnchangedMethods;

/// `asyncio.base_events.Server` and its methods, taken when ferroloop is
/// imported (a test may replace them for a while).
struct AsyncioServer {
    type_: Py<PyType>,
    attach: Py<PyAny>,
    detach: Py<PyAny>,
    /// Whether asyncio's `assert` statements run (not under `python -O`).
    asserts: bool,
}

static ASYNCIO_SERVER: PyOnceLock<AsyncioServer> = PyOnceLock::new();
static METHODS_UNCHANGED: UnchangedMethods = UnchangedMethods::new();

pub fn init(py: Python<'_>) -> PyResult<()> {
    asyncio_server(py)?;
    clients::init(py)
}

fn asyncio_server(py: Python<'_>) -> PyResult<&AsyncioServer> {
    ASYNCIO_SERVER.get_or_try_init(py, || {
        let type_ = py.import("asyncio.base_events")?.getattr("Server")?.cast_into::<PyType>()?;
        let optimize: i64 = py.import("sys")?.getattr("flags")?.getattr("optimize")?.extract()?;
        Ok::<_, PyErr>(AsyncioServer {
            attach: type_.getattr("_attach")?.unbind(),
            detach: type_.getattr("_detach")?.unbind(),
            type_: type_.unbind(),
            asserts: optimize == 0,
        })
    })
}

/// The server's `AsyncioServer`, if it is asyncio's `Server` with its own
/// `_attach` and `_detach`.
fn plain<'py>(server: &Bound<'py, PyAny>) -> PyResult<Option<&'py AsyncioServer>> {
    let py = server.py();
    let asyncio = asyncio_server(py)?;
    let type_ = server.get_type();
    let plain = type_.is(asyncio.type_.bind(py))
        && METHODS_UNCHANGED.hold(&type_, &[(intern!(py, "_attach"), &asyncio.attach), (intern!(py, "_detach"), &asyncio.detach)])?;
    Ok(plain.then_some(asyncio))
}

/// `self._server = server; server._attach()`, which fails on a closed
/// server. From 3.13 a transport's `__del__` detaches it from its server,
/// and `_server` is set first, as asyncio sets it. Before 3.13 asyncio's
/// `__del__` never detaches (a server whose transport was collected
/// unclosed would wait for it forever); ferroloop's does, so `_server` is
/// set only once attached, or `__del__` would take a connection off the
/// server's count that was never on it.
pub fn attach_server(transport: &Bound<'_, PyAny>, server: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = transport.py();
    let attach = || if server.is_none() { Ok(()) } else { attach(server, transport) };
    if tracks_clients(py) {
        slots::set(transport, Slot::Server, server)?;
        attach()
    } else {
        attach()?;
        slots::set(transport, Slot::Server, server)
    }
}

/// The transport leaves its server (`_call_connection_lost`, `__del__`).
#[pyfunction]
pub fn detach_server(transport: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = transport.py();
    let Some(server) = slots::get(transport, Slot::Server)?.filter(|s| !s.is_none()) else { return Ok(()) };
    slots::set(transport, Slot::Server, &py.None().into_bound(py))?;
    detach(&server, transport)
}

/// `server._attach()` (from 3.13 `server._attach(transport)`):
/// `assert self._sockets is not None`, then one more connection.
fn attach(server: &Bound<'_, PyAny>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = server.py();
    let Some(asyncio) = plain(server)? else { return call(server, intern!(py, "_attach"), transport) };
    if asyncio.asserts && server.getattr(intern!(py, "_sockets"))?.is_none() {
        return Err(PyAssertionError::new_err(()));
    }
    if tracks_clients(py) {
        clients::add(&server.getattr(intern!(py, "_clients"))?, transport)?;
    } else {
        let count = server.getattr(intern!(py, "_active_count"))?;
        server.setattr(intern!(py, "_active_count"), Count::of(&count).add(1)?)?;
    }
    Ok(())
}

/// `server._detach()` (from 3.13 `server._detach(transport)`): one
/// connection less, and the waiters of `wait_closed` woken when that was
/// the last of a closed server's.
fn detach(server: &Bound<'_, PyAny>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = server.py();
    let Some(asyncio) = plain(server)? else { return call(server, intern!(py, "_detach"), transport) };
    let none_left = if tracks_clients(py) {
        clients::discard_and_count(&server.getattr(intern!(py, "_clients"))?, transport)? == 0
    } else {
        let count = server.getattr(intern!(py, "_active_count"))?;
        let count = Count::of(&count);
        if asyncio.asserts && !count.is_positive()? {
            return Err(PyAssertionError::new_err(()));
        }
        let left = count.add(-1)?;
        server.setattr(intern!(py, "_active_count"), &left)?;
        Count::of(&left).is_zero()?
    };
    if none_left && server.getattr(intern!(py, "_sockets"))?.is_none() {
        server.call_method0(intern!(py, "_wakeup"))?;
    }
    Ok(())
}

/// `Server._active_count`: an int, worked on in Rust while it fits.
struct Count<'a, 'py> {
    object: &'a Bound<'py, PyAny>,
    value: Option<i64>,
}

impl<'a, 'py> Count<'a, 'py> {
    fn of(object: &'a Bound<'py, PyAny>) -> Self {
        let value = if object.is_exact_instance_of::<PyInt>() { object.extract().ok() } else { None };
        Count { object, value }
    }

    /// `count + delta`
    fn add(&self, delta: i64) -> PyResult<Bound<'py, PyAny>> {
        match self.value.and_then(|n| n.checked_add(delta)) {
            Some(n) => Ok(n.into_pyobject(self.object.py())?.into_any()),
            None => self.object.add(delta),
        }
    }

    /// `count > 0`
    fn is_positive(&self) -> PyResult<bool> {
        self.value.map_or_else(|| self.object.gt(0), |n| Ok(n > 0))
    }

    /// `count == 0`
    fn is_zero(&self) -> PyResult<bool> {
        self.value.map_or_else(|| self.object.eq(0), |n| Ok(n == 0))
    }
}

/// The server's own `_attach` or `_detach`.
fn call(server: &Bound<'_, PyAny>, method: &Bound<'_, PyString>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
    if tracks_clients(server.py()) {
        server.call_method1(method, (transport,)).map(drop)
    } else {
        server.call_method0(method).map(drop)
    }
}

/// From 3.13 the server keeps its transports (`_clients`), not a count.
fn tracks_clients(py: Python<'_>) -> bool {
    static TRACKS_CLIENTS: OnceLock<bool> = OnceLock::new();
    *TRACKS_CLIENTS.get_or_init(|| py.version_info() >= (3, 13))
}

/// `Server._clients` (3.13+), a `weakref.WeakSet`: its `add`, `discard` and
/// `len` by their steps while they are the class's own and no removals
/// are pending (which its methods commit first).
mod clients {
    use pyo3::intern;
    use pyo3::prelude::*;
    use pyo3::sync::PyOnceLock;
    use pyo3::types::{PyList, PySet, PyType, PyWeakrefReference};

    use crate::pyhelpers::UnchangedMethods;
    use crate::transport::weak_parts::LastWeakParts;

    /// `weakref.WeakSet` and its methods, taken when ferroloop is imported.
    struct WeakSet {
        type_: Py<PyType>,
        add: Py<PyAny>,
        discard: Py<PyAny>,
        len: Py<PyAny>,
    }

    static WEAK_SET: PyOnceLock<WeakSet> = PyOnceLock::new();
    static METHODS_UNCHANGED: UnchangedMethods = UnchangedMethods::new();

    /// Take WeakSet's methods when ferroloop is imported (a test may
    /// replace them for a while).
    pub(super) fn init(py: Python<'_>) -> PyResult<()> {
        weak_set(py).map(drop)
    }

    fn weak_set(py: Python<'_>) -> PyResult<&WeakSet> {
        WEAK_SET.get_or_try_init(py, || {
            let type_ = py.import("weakref")?.getattr("WeakSet")?.cast_into::<PyType>()?;
            Ok::<_, PyErr>(WeakSet {
                add: type_.getattr("add")?.unbind(),
                discard: type_.getattr("discard")?.unbind(),
                len: type_.getattr("__len__")?.unbind(),
                type_: type_.unbind(),
            })
        })
    }

    /// The parts of the last server's clients.
    static LAST_CLIENTS: LastWeakParts = LastWeakParts::new();

    /// `clients.data`, `clients._pending_removals` and `clients._remove`.
    type WeakSetParts<'py> = (Bound<'py, PySet>, Bound<'py, PyList>, Bound<'py, PyAny>);

    /// The [`WeakSetParts`] of a plain WeakSet with no removals pending.
    fn parts<'py>(clients: &Bound<'py, PyAny>) -> PyResult<Option<WeakSetParts<'py>>> {
        let py = clients.py();
        let weak_set = weak_set(py)?;
        let type_ = clients.get_type();
        let plain = type_.is(weak_set.type_.bind(py))
            && METHODS_UNCHANGED.hold(&type_, &[(intern!(py, "add"), &weak_set.add), (intern!(py, "discard"), &weak_set.discard), (intern!(py, "__len__"), &weak_set.len)])?;
        if !plain {
            return Ok(None);
        }
        let parts = LAST_CLIENTS.of(clients)?;
        let data = parts.data.into_bound(py).cast_into::<PySet>();
        let pending = parts.pending_removals.into_bound(py).cast_into::<PyList>();
        Ok(match (data, pending) {
            (Ok(data), Ok(pending)) if pending.is_empty() => Some((data, pending, parts.remove.into_bound(py))),
            _ => None,
        })
    }

    /// `clients.add(transport)`: `data.add(ref(transport, clients._remove))`
    pub fn add(clients: &Bound<'_, PyAny>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = clients.py();
        let Some((data, _, remove)) = parts(clients)? else {
            return clients.call_method1(intern!(py, "add"), (transport,)).map(drop);
        };
        data.add(PyWeakrefReference::new_with(transport, remove)?)
    }

    /// `clients.discard(transport)`: `data.discard(ref(transport))`; then
    /// `len(clients)`: `len(data) - len(_pending_removals)`.
    pub fn discard_and_count(clients: &Bound<'_, PyAny>, transport: &Bound<'_, PyAny>) -> PyResult<usize> {
        let py = clients.py();
        let Some((data, pending, _)) = parts(clients)? else {
            clients.call_method1(intern!(py, "discard"), (transport,))?;
            return clients.len();
        };
        data.discard(PyWeakrefReference::new(transport)?)?;
        Ok(data.len() - pending.len())
    }
}
