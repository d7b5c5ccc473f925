//! The attributes a socket transport's Python object is given on every
//! connection. `RustTransport` (ferroloop/_transport.py) keeps them in
//! slots (`__slots__`; `_loop` is asyncio's `_FlowControlMixin`'s slot,
//! `_extra` its `BaseTransport`'s), and Rust writes them through the slots'
//! member descriptors (a store at a fixed offset) and reads them at that
//! offset, instead of the attribute protocol's name lookups in the class
//! and the instance's dict. A short connection sets nine of them, and
//! every call of a transport method reads `_core`.

use pyo3::exceptions::PyAttributeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

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

/// `RustTransport`, its slots' member descriptors and their offsets in
/// the object (each the offset of an object reference), in `Slot`'s order.
struct Slots {
    class: Py<PyType>,
    descriptors: Vec<Py<PyAny>>,
    offsets: Vec<Option<usize>>,
}

static SLOTS: PyOnceLock<Slots> = PyOnceLock::new();

fn slots(py: Python<'_>) -> PyResult<&Slots> {
    SLOTS.get_or_try_init(py, || {
        let class = py.import("ferroloop._transport")?.getattr("RustTransport")?.cast_into::<PyType>()?;
        // (on the class, a member descriptor is itself)
        let descriptors = NAMES.iter().map(|name| Ok(class.getattr(*name)?.unbind())).collect::<PyResult<Vec<_>>>()?;
        let offsets = descriptors.iter().map(|d| object_member_offset(d.bind(py))).collect();
        Ok::<_, PyErr>(Slots { class: class.unbind(), descriptors, offsets })
    })
}

/// Where a member descriptor of `__slots__` keeps its object reference.
fn object_member_offset(descriptor: &Bound<'_, PyAny>) -> Option<usize> {
    let ptr = descriptor.as_ptr();
    // SAFETY: attached; the object is checked to be a member descriptor
    // (exactly), whose struct starts as PyMemberDescrObject; its member def
    // lives as long as the class, which `Slots` keeps.
    unsafe {
        if ffi::Py_TYPE(ptr) != std::ptr::addr_of_mut!(ffi::PyMemberDescr_Type) {
            return None;
        }
        let member = (*ptr.cast::<ffi::PyMemberDescrObject>()).d_member.cast::<ffi::PyMemberDef>();
        ((*member).type_code == ffi::Py_T_OBJECT_EX).then(|| usize::try_from((*member).offset).ok()).flatten()
    }
}

fn descriptor(py: Python<'_>, slot: Slot) -> PyResult<&Bound<'_, PyAny>> {
    Ok(slots(py)?.descriptors[slot as usize].bind(py))
}

/// `transport.<slot> = value` (a TypeError for an object that is no `RustTransport`).
pub fn set(transport: &Bound<'_, PyAny>, slot: Slot, value: &Bound<'_, PyAny>) -> PyResult<()> {
    descriptor_set(descriptor(transport.py(), slot)?, transport, value)
}

/// `transport.<slot>`, None while it was never set (the object's
/// `__init__` failed before it).
pub fn get<'py>(transport: &Bound<'py, PyAny>, slot: Slot) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = transport.py();
    let slots = slots(py)?;
    if is_transport(transport, slots) {
        if let Some(value) = read_at_offset(transport, slots, slot) {
            return Ok(value);
        }
    }
    match descriptor_get(descriptor(py, slot)?, transport) {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.is_instance_of::<PyAttributeError>(py) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `transport.<slot>` (AttributeError while never set) for a
/// `RustTransport`; None for any other object (the pipe transports, whose
/// methods `core_methods` also makes).
pub fn get_if_instance<'py>(transport: &Bound<'py, PyAny>, slot: Slot) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = transport.py();
    let slots = slots(py)?;
    if !is_transport(transport, slots) {
        return Ok(None);
    }
    match read_at_offset(transport, slots, slot) {
        Some(Some(value)) => Ok(Some(value)),
        // (unset, or no offset known: the member descriptor, with its own error)
        _ => descriptor_get(slots.descriptors[slot as usize].bind(py), transport).map(Some),
    }
}

fn is_transport(transport: &Bound<'_, PyAny>, slots: &Slots) -> bool {
    // SAFETY: attached, live objects.
    unsafe { ffi::PyObject_TypeCheck(transport.as_ptr(), slots.class.as_ptr().cast()) != 0 }
}

/// The slot of `transport`, a `RustTransport` (the caller checked), read
/// at its offset (what its member descriptor does, without the call):
/// Some(None) while unset; None for a slot without a known offset.
fn read_at_offset<'py>(transport: &Bound<'py, PyAny>, slots: &Slots, slot: Slot) -> Option<Option<Bound<'py, PyAny>>> {
    let offset = slots.offsets[slot as usize]?;
    // SAFETY: the object is a RustTransport (the caller's check), so its
    // layout has the slot's object reference at the member's offset: NULL
    // while unset, else a reference the object owns, borrowed here and then
    // owned anew.
    let value = unsafe { *transport.as_ptr().cast::<u8>().add(offset).cast::<*mut ffi::PyObject>() };
    Some((!value.is_null()).then(|| unsafe { Bound::from_borrowed_ptr(transport.py(), value) }))
}
