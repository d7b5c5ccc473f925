//! The C methods each TLS record passes through (`_ssl._SSLSocket.read`
//! and `write`, `ssl.MemoryBIO.read`, `write` and `pending`), called by
//! their type's own descriptors when the object is exactly that type. A
//! lookup by name (the type's attribute cache, then the instance) cost
//! more than some of these calls; for an object of another type (neither
//! type can be subclassed, but a test's mock or an `SSLObject` whose
//! `_sslobj` is a wrapper can stand in) the lookup by name is kept, so
//! what is called never differs.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use super::lent_bytes;
use crate::pyhelpers::{descriptor_get, with_readonly_view};

/// The two types and their descriptors (from each type's `__dict__`).
struct CTypes {
    ssl: Py<PyAny>,
    ssl_read: Py<PyAny>,
    ssl_write: Py<PyAny>,
    bio: Py<PyAny>,
    bio_read: Py<PyAny>,
    bio_write: Py<PyAny>,
    bio_pending: Py<PyAny>,
}

static C_TYPES: PyOnceLock<CTypes> = PyOnceLock::new();

fn c_types(py: Python<'_>) -> PyResult<&CTypes> {
    C_TYPES.get_or_try_init(py, || {
        let module = py.import("_ssl")?;
        let (ssl, bio) = (module.getattr("_SSLSocket")?, module.getattr("MemoryBIO")?);
        let (ssl_dict, bio_dict) = (ssl.getattr("__dict__")?, bio.getattr("__dict__")?);
        Ok::<_, PyErr>(CTypes {
            ssl_read: ssl_dict.get_item("read")?.unbind(),
            ssl_write: ssl_dict.get_item("write")?.unbind(),
            bio_read: bio_dict.get_item("read")?.unbind(),
            bio_write: bio_dict.get_item("write")?.unbind(),
            bio_pending: bio_dict.get_item("pending")?.unbind(),
            ssl: ssl.unbind(),
            bio: bio.unbind(),
        })
    })
}

fn is_exactly(obj: &Bound<'_, PyAny>, type_: &Py<PyAny>) -> bool {
    obj.get_type().is(type_.bind(obj.py()))
}

/// `ssl.read(size)` (`size`: an int)
pub(super) fn ssl_read<'py>(ssl: &Bound<'py, PyAny>, size: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let (py, c) = (ssl.py(), c_types(ssl.py())?);
    if is_exactly(ssl, &c.ssl) {
        c.ssl_read.bind(py).call1((ssl, size))
    } else {
        ssl.call_method1(intern!(py, "read"), (size,))
    }
}

/// `ssl.read(size, buffer)`: into the buffer; the count read.
pub(super) fn ssl_read_into<'py>(ssl: &Bound<'py, PyAny>, size: usize, buffer: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let (py, c) = (ssl.py(), c_types(ssl.py())?);
    if is_exactly(ssl, &c.ssl) {
        c.ssl_read.bind(py).call1((ssl, size, buffer))
    } else {
        ssl.call_method1(intern!(py, "read"), (size, buffer))
    }
}

/// `ssl.write(data)`: the count written.
pub(super) fn ssl_write<'py>(ssl: &Bound<'py, PyAny>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let (py, c) = (ssl.py(), c_types(ssl.py())?);
    if is_exactly(ssl, &c.ssl) {
        c.ssl_write.bind(py).call1((ssl, data))
    } else {
        ssl.call_method1(intern!(py, "write"), (data,))
    }
}

/// `bio.write(data)` for bytes of ours: lent to the C method, or for
/// another object as a `memoryview`.
pub(super) fn bio_write_from(bio: &Bound<'_, PyAny>, data: &[u8]) -> PyResult<()> {
    let (py, c) = (bio.py(), c_types(bio.py())?);
    if is_exactly(bio, &c.bio) {
        lent_bytes::lend(py, data, |lent| c.bio_write.bind(py).call1((bio, lent)).map(drop))
    } else {
        with_readonly_view(py, data, |view| bio.call_method1(intern!(py, "write"), (view,)).map(drop))
    }
}

/// `bio.write(data)`
pub(super) fn bio_write(bio: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    let (py, c) = (bio.py(), c_types(bio.py())?);
    if is_exactly(bio, &c.bio) {
        c.bio_write.bind(py).call1((bio, data)).map(drop)
    } else {
        bio.call_method1(intern!(py, "write"), (data,)).map(drop)
    }
}

/// `bio.read()`: all it holds.
pub(super) fn bio_read<'py>(bio: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let (py, c) = (bio.py(), c_types(bio.py())?);
    if is_exactly(bio, &c.bio) {
        c.bio_read.bind(py).call1((bio,))
    } else {
        bio.call_method0(intern!(py, "read"))
    }
}

/// `bio.pending`: the count of bytes it holds.
pub(super) fn bio_pending(bio: &Bound<'_, PyAny>) -> PyResult<usize> {
    let (py, c) = (bio.py(), c_types(bio.py())?);
    if is_exactly(bio, &c.bio) {
        descriptor_get(c.bio_pending.bind(py), bio)?.extract()
    } else {
        bio.getattr(intern!(py, "pending"))?.extract()
    }
}
