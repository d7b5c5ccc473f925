//! `StreamReaderProtocol.data_received` → `StreamReader.feed_data` in Rust,
//! for the protocol that `asyncio.open_connection`, `start_server` and their
//! Unix variants put under every stream.
//!
//! Step for step what those methods do (they are the same in 3.10–3.13),
//! without their four Python frames (`data_received`, the `_stream_reader`
//! property, `feed_data`, `_wakeup_waiter`) and without a `bytes` object:
//! the read buffer is copied straight into the reader's `bytearray`. This is
//! most of the loop's share of a stream read. Only asyncio's own classes
//! with their own methods take this path; a subclass, a patched method or a
//! reader past EOF gets the Python methods themselves.

use pyo3::exceptions::PyNotImplementedError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyString, PyType};

/// asyncio's classes and the functions this module stands in for.
struct Originals {
    protocol_type: Py<PyType>,
    data_received: Py<PyAny>,
    reader_type: Py<PyType>,
    feed_data: Py<PyAny>,
    wakeup_waiter: Py<PyAny>,
}

/// `None` when asyncio's methods were replaced before ferroloop saw them.
static ORIGINALS: PyOnceLock<Option<Originals>> = PyOnceLock::new();

fn originals<'py>(py: Python<'py>) -> PyResult<Option<&'py Originals>> {
    let found = ORIGINALS.get_or_try_init(py, || {
        let streams = py.import("asyncio.streams")?;
        let protocol_type = streams.getattr("StreamReaderProtocol")?.cast_into::<PyType>()?;
        let reader_type = streams.getattr("StreamReader")?.cast_into::<PyType>()?;
        let method = |cls: &Bound<'py, PyType>, name: &str| -> PyResult<Option<Bound<'py, PyAny>>> {
            let f = cls.getattr(name)?;
            let qualname = format!("{}.{name}", cls.name()?);
            let genuine = f.getattr("__module__").and_then(|m| m.eq("asyncio.streams")).unwrap_or(false)
                && f.getattr("__qualname__").and_then(|q| q.eq(qualname)).unwrap_or(false);
            Ok(genuine.then_some(f))
        };
        let (Some(data_received), Some(feed_data), Some(wakeup_waiter)) = (
            method(&protocol_type, "data_received")?,
            method(&reader_type, "feed_data")?,
            method(&reader_type, "_wakeup_waiter")?,
        ) else {
            return Ok::<_, PyErr>(None);
        };
        Ok(Some(Originals {
            protocol_type: protocol_type.unbind(),
            data_received: data_received.unbind(),
            reader_type: reader_type.unbind(),
            feed_data: feed_data.unbind(),
            wakeup_waiter: wakeup_waiter.unbind(),
        }))
    })?;
    Ok(found.as_ref())
}

/// Whether `protocol` is asyncio's own `StreamReaderProtocol`, whose
/// `data_received` (looked up as the transport will call it) and reader
/// methods are asyncio's: then [`data_received`] may stand in for it.
pub fn is_plain_stream_protocol(protocol: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = protocol.py();
    let Some(o) = originals(py)? else { return Ok(false) };
    if !protocol.get_type().is(o.protocol_type.bind(py)) {
        return Ok(false);
    }
    let Ok(bound) = protocol.getattr(pyo3::intern!(py, "data_received")) else { return Ok(false) };
    let own_method = is_method_of(&bound, o.data_received.bind(py));
    let reader_type = o.reader_type.bind(py);
    Ok(own_method
        && reader_type.getattr("feed_data")?.is(o.feed_data.bind(py))
        && reader_type.getattr("_wakeup_waiter")?.is(o.wakeup_waiter.bind(py)))
}

/// `protocol.data_received(data)` for a protocol that passed
/// [`is_plain_stream_protocol`] when it was set.
pub fn data_received(protocol: &Bound<'_, PyAny>, data: &[u8]) -> PyResult<()> {
    let py = protocol.py();
    // `reader = self._stream_reader` (a weak reference, or None).
    let reference = protocol.getattr(pyo3::intern!(py, "_stream_reader_wr"))?;
    if reference.is_none() {
        return Ok(());
    }
    let reader = reference.call0()?;
    if reader.is_none() {
        return Ok(());
    }
    match Reader::plain(&reader)? {
        Some(plain) => plain.feed_data(data),
        None => feed_data_in_python(&reader, data),
    }
}

/// `reader.feed_data(bytes(data))`, whatever it is.
fn feed_data_in_python(reader: &Bound<'_, PyAny>, data: &[u8]) -> PyResult<()> {
    let py = reader.py();
    reader.call_method1(pyo3::intern!(py, "feed_data"), (PyBytes::new(py, data),)).map(drop)
}

/// An instance of asyncio's own `StreamReader` whose `feed_data` this
/// module may do.
struct Reader<'py> {
    object: Bound<'py, PyAny>,
    buffer: Bound<'py, PyByteArray>,
}

impl<'py> Reader<'py> {
    /// `reader` when `feed_data` may be done here: asyncio's class, its own
    /// `feed_data` (none set on the instance), not past EOF, a `bytearray`
    /// buffer.
    fn plain(reader: &Bound<'py, PyAny>) -> PyResult<Option<Self>> {
        let py = reader.py();
        let Some(o) = originals(py)? else { return Ok(None) };
        if !reader.get_type().is(o.reader_type.bind(py))
            || !is_method_of(&reader.getattr(pyo3::intern!(py, "feed_data"))?, o.feed_data.bind(py))
            || reader.getattr(pyo3::intern!(py, "_eof"))?.is_truthy()?
        {
            return Ok(None);
        }
        Ok(match reader.getattr(pyo3::intern!(py, "_buffer"))?.cast_into_exact::<PyByteArray>() {
            Ok(buffer) => Some(Reader { object: reader.clone(), buffer }),
            Err(_) => None,
        })
    }

    fn get(&self, name: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
        self.object.getattr(name)
    }

    fn set(&self, name: &Bound<'py, PyString>, value: impl IntoPyObject<'py>) -> PyResult<()> {
        self.object.setattr(name, value)
    }

    /// `StreamReader.feed_data` for a non-empty `data`.
    fn feed_data(&self, data: &[u8]) -> PyResult<()> {
        extend(&self.buffer, data)?;
        self.wakeup_waiter()?;
        self.pause_if_full()
    }

    /// `StreamReader._wakeup_waiter`.
    fn wakeup_waiter(&self) -> PyResult<()> {
        let py = self.object.py();
        let waiter = self.get(pyo3::intern!(py, "_waiter"))?;
        if waiter.is_none() {
            return Ok(());
        }
        self.set(pyo3::intern!(py, "_waiter"), py.None())?;
        if !waiter.call_method0(pyo3::intern!(py, "cancelled"))?.is_truthy()? {
            waiter.call_method1(pyo3::intern!(py, "set_result"), (py.None(),))?;
        }
        Ok(())
    }

    /// The end of `feed_data`: pause the transport once the buffer holds
    /// more than twice the reader's limit.
    fn pause_if_full(&self) -> PyResult<()> {
        let py = self.object.py();
        let transport = self.get(pyo3::intern!(py, "_transport"))?;
        if transport.is_none() || self.get(pyo3::intern!(py, "_paused"))?.is_truthy()? {
            return Ok(());
        }
        let limit = self.get(pyo3::intern!(py, "_limit"))?;
        let full = match limit.extract::<isize>().ok().and_then(|l| l.checked_mul(2)) {
            Some(twice) => self.buffer.len() as isize > twice,
            None => self.buffer.len().into_pyobject(py)?.gt(2i64.into_pyobject(py)?.mul(&limit)?)?,
        };
        if !full {
            return Ok(());
        }
        match transport.call_method0(pyo3::intern!(py, "pause_reading")) {
            Ok(_) => self.set(pyo3::intern!(py, "_paused"), true),
            // The transport can't be paused: forget it and buffer everything.
            Err(e) if e.is_instance_of::<PyNotImplementedError>(py) => self.set(pyo3::intern!(py, "_transport"), py.None()),
            Err(e) => Err(e),
        }
    }
}

/// `buffer.extend(data)`, with the same `BufferError` while it is exported.
fn extend(buffer: &Bound<'_, PyByteArray>, data: &[u8]) -> PyResult<()> {
    let old = buffer.len();
    buffer.resize(old + data.len())?;
    // SAFETY: the resize succeeded, so nothing holds a view of the
    // bytearray's memory (a live export makes it fail); we are attached and
    // run no Python code until the copy is done.
    unsafe { buffer.as_bytes_mut()[old..].copy_from_slice(data) };
    Ok(())
}

// CPython's bound-method type and accessor, which pyo3-ffi does not declare.
extern "C" {
    static mut PyMethod_Type: ffi::PyTypeObject;
    fn PyMethod_Function(method: *mut ffi::PyObject) -> *mut ffi::PyObject;
}

/// Whether `attribute` is `function` bound to an instance (not something
/// set on the instance itself).
fn is_method_of(attribute: &Bound<'_, PyAny>, function: &Bound<'_, PyAny>) -> bool {
    // SAFETY: attached; PyMethod_Type is only used for its address, and
    // PyMethod_Function is only called on an object of exactly that type; it
    // returns a borrowed pointer that is only compared.
    unsafe {
        ffi::Py_TYPE(attribute.as_ptr()) == std::ptr::addr_of_mut!(PyMethod_Type)
            && PyMethod_Function(attribute.as_ptr()) == function.as_ptr()
    }
}
