//! The attributes a socket transport's Python object is given on every
//! connection. `RustTransport` (ferroloop/_transport.py) keeps them in
//! slots (`__slots__`; `_loop` is asyncio's `_FlowControlMixin`'s slot,
//! `_extra` its `BaseTransport`'s), and Rust reads and writes them through
//! the slots' member descriptors: a store at a fixed offset, instead of
//! the attribute protocol's name lookups in the class and the instance's
//! dict. A short connection sets nine of them.

use pyo3::exceptions::PyAttributeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::pyhelpers::{descriptor_get, descriptor_set};

#[derive(Clone, Copy)]
pub enum Slot {
    Extra,
    Loop,
    Sock,
    SockFd,
    Core,
    Server,
}

const NAMES: [&str; 6] = ["_extra", "_loop", "_sock", "_sock_fd", "_core", "_server"];

/// The member descriptors, in `Slot`'s order.
static DESCRIPTORS: PyOnceLock<Vec<Py<PyAny>>> = PyOnceLock::new();

fn descriptor(py: Python<'_>, slot: Slot) -> PyResult<&Bound<'_, PyAny>> {
    let all = DESCRIPTORS.get_or_try_init(py, || {
        let class = py.import("ferroloop._transport")?.getattr("RustTransport")?;
        // (on the class, a member descriptor is itself)
        NAMES.iter().map(|name| Ok(class.getattr(*name)?.unbind())).collect::<PyResult<Vec<_>>>()
    })?;
    Ok(all[slot as usize].bind(py))
}

/// `transport.<slot> = value` (a TypeError for an object that is no `RustTransport`).
pub fn set(transport: &Bound<'_, PyAny>, slot: Slot, value: &Bound<'_, PyAny>) -> PyResult<()> {
    descriptor_set(descriptor(transport.py(), slot)?, transport, value)
}

/// `transport.<slot>`, None while it was never set (the object's
/// `__init__` failed before it).
pub fn get<'py>(transport: &Bound<'py, PyAny>, slot: Slot) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = transport.py();
    match descriptor_get(descriptor(py, slot)?, transport) {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.is_instance_of::<PyAttributeError>(py) => Ok(None),
        Err(e) => Err(e),
    }
}
