//! The write end of a pipe (also a FIFO, a character device or a socket):
//! asyncio's `_UnixWritePipeTransport`.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyAssertionError, PyAttributeError, PyBrokenPipeError, PyBufferError, PyTypeError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};

use super::log_closed_by_peer;
use crate::transport::base::{Core, KindState};
use crate::transport::socket_io::{self, os_error, would_block};
use crate::transport::stream::Chunk;
use crate::transport::write_buffer::WriteBuffer;

const WRITE_ERROR: &str = "Fatal write error on pipe transport";

/// Nothing beyond [`Core`]'s state.
#[derive(Default)]
pub struct WriteState;

impl KindState for WriteState {
    fn release(&mut self) -> Box<dyn std::any::Any> {
        Box::new(())
    }
}

#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct WritePipeCore {
    core: Core<WriteBuffer<Chunk>, WriteState>,
}

/// The bytes `write()` was given: a `bytes` (held as is if queued), or a
/// contiguous byte buffer (bytearray, memoryview: copied if queued, since
/// its owner may change it).
enum Data<'py> {
    Bytes(Bound<'py, PyBytes>),
    Buffer(PyBuffer<u8>),
    /// A memoryview that is not C-contiguous, of `len()` items: asyncio's
    /// `os.write` raises BufferError for it (`bytearray +=`, a TypeError).
    Strided(usize),
}

const NOT_CONTIGUOUS: &str = "memoryview: underlying buffer is not C-contiguous";

impl Data<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Data::Bytes(b) => b.as_bytes(),
            // SAFETY: the view keeps the exporter's memory alive and unmoved
            // while `self` lives; it is C-contiguous and `len_bytes` long
            // (checked in `data_of`), and no Python code runs while the
            // slice is in use (a write(2) or a copy), so nothing changes it.
            Data::Buffer(view) => unsafe { std::slice::from_raw_parts(view.buf_ptr() as *const u8, view.len_bytes()) },
            Data::Strided(_) => &[],
        }
    }

    /// asyncio's `if not data: return`.
    fn is_empty(&self) -> bool {
        match self {
            Data::Strided(len) => *len == 0,
            _ => self.as_slice().is_empty(),
        }
    }

    /// What is left after the first `sent` bytes, to queue.
    fn into_chunk(self, sent: usize) -> (Chunk, usize) {
        match self {
            Data::Bytes(b) => (Chunk::Shared(PyBackedBytes::from(b)), sent),
            _ => (Chunk::Owned(self.as_slice()[sent..].to_vec()), 0),
        }
    }
}

/// `assert isinstance(data, (bytes, bytearray, memoryview)), repr(data)`,
/// then the bytes to write. Contiguous buffers of other item formats are
/// copied as `bytes(data)` makes them.
fn data_of<'py>(data: &Bound<'py, PyAny>) -> PyResult<Data<'py>> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(Data::Bytes(b.clone()));
    }
    if !(data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>()) {
        return Err(PyAssertionError::new_err(data.repr()?.unbind()));
    }
    if let Ok(view) = PyBuffer::<u8>::get(data) {
        if view.is_c_contiguous() {
            return Ok(Data::Buffer(view));
        }
        return Ok(Data::Strided(data.len()?));
    }
    let copy = data.py().get_type::<PyBytes>().call1((data,))?.cast_into::<PyBytes>()?;
    Ok(Data::Bytes(copy))
}

impl WritePipeCore {
    /// `_close(exc)`: drop the queue, stop watching, `connection_lost(exc)`
    /// on the next iteration. Like asyncio's, not guarded: a second call
    /// schedules `_call_connection_lost` again.
    fn close_with(&self, py: Python<'_>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        if self.core.event_loop(py).is_none() {
            // asyncio's `self._loop._remove_reader(...)` once `_loop` is None.
            return Err(PyAttributeError::new_err("'NoneType' object has no attribute '_remove_reader'"));
        }
        let (had_buffer, dropped) = {
            let mut s = self.core.state();
            s.closing = true;
            (!s.buffer.is_empty(), s.buffer.take())
        };
        drop(dropped);
        if had_buffer {
            self.core.unwatch(py, true)?;
        }
        self.core.unwatch(py, false)?;
        self.core.schedule_connection_lost(py, exc)
    }
}

/// The fd callbacks, called by the loop as Rust functions (`native_callbacks`).
pub(crate) fn write_ready(core: &Bound<'_, PyAny>) -> PyResult<()> {
    core.cast::<WritePipeCore>()?.get()._write_ready(core.py())
}

pub(crate) fn read_ready(core: &Bound<'_, PyAny>) -> PyResult<()> {
    core.cast::<WritePipeCore>()?.get()._read_ready(core.py())
}

#[pymethods]
impl WritePipeCore {
    #[new]
    fn new(loop_: Bound<'_, PyAny>, pipe: Bound<'_, PyAny>, transport: Bound<'_, PyAny>, protocol: Bound<'_, PyAny>) -> PyResult<Self> {
        let this = WritePipeCore { core: Core::new(&loop_, &pipe, &transport, WriteState)? };
        this.set_protocol(&protocol);
        Ok(this)
    }

    /// Write at once what the pipe takes when nothing is queued; queue the
    /// rest and watch for writability; then flow control.
    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let core = &slf.get().core;
        let data = data_of(data)?;
        if data.is_empty() {
            return Ok(());
        }
        let warning = "pipe closed by peer or os.write(pipe, data) raised exception.";
        if !core.writable_or_log_as(py, true, warning)? {
            return Ok(());
        }
        let queue_empty = core.state().buffer.is_empty();
        if let Data::Strided(_) = data {
            if !queue_empty {
                // asyncio's `self._buffer += data`.
                return Err(PyTypeError::new_err("can't concat memoryview to bytearray"));
            }
            core.state().conn_lost += 1;
            return core.fatal_error(py, PyBufferError::new_err(NOT_CONTIGUOUS), WRITE_ERROR);
        }
        let bytes = data.as_slice();
        let mut sent = 0;
        if queue_empty {
            match socket_io::write_fd(core.fd(), bytes) {
                Ok(n) => sent = n,
                Err(e) if would_block(&e) => {}
                Err(e) => {
                    core.state().conn_lost += 1;
                    return core.fatal_error(py, os_error(e), WRITE_ERROR);
                }
            }
            if sent == bytes.len() {
                return Ok(());
            }
            core.watch(slf.as_any(), true)?;
        }
        let (chunk, skip) = data.into_chunk(sent);
        core.state().buffer.push(chunk, skip);
        core.maybe_pause_protocol(py)
    }

    /// The fd is writable: write what is queued, in one `writev`. The
    /// protocol resumes only once everything went out, as in asyncio.
    fn _write_ready(&self, py: Python<'_>) -> PyResult<()> {
        let core = &self.core;
        let result = {
            let s = core.state();
            if s.buffer.is_empty() {
                return Err(PyAssertionError::new_err("Data should not be empty"));
            }
            let mut slices = Vec::new();
            s.buffer.io_slices(&mut slices);
            socket_io::write_vectored_fd(core.fd(), &slices)
        };
        let n = match result {
            Ok(n) => n,
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => {
                let dropped = {
                    let mut s = core.state();
                    s.conn_lost += 1;
                    s.buffer.take()
                };
                drop(dropped);
                core.unwatch(py, true)?;
                return core.fatal_error(py, os_error(e), WRITE_ERROR);
            }
        };
        let (done, empty) = {
            let mut s = core.state();
            let done = s.buffer.consume(n);
            (done, s.buffer.is_empty())
        };
        drop(done);
        if !empty {
            return Ok(());
        }
        core.unwatch(py, true)?;
        core.maybe_resume_protocol(py)?; // may write more
        if core.state().closing {
            core.unwatch(py, false)?;
            core.connection_lost_now(py)?;
        }
        Ok(())
    }

    /// The reader on the write end fired: the read end was closed.
    fn _read_ready(&self, py: Python<'_>) -> PyResult<()> {
        log_closed_by_peer(&self.core, py)?;
        if self.core.state().buffer.is_empty() {
            self.close_with(py, None)
        } else {
            let exc = PyBrokenPipeError::new_err(()).into_value(py).into_any().into_bound(py);
            self.close_with(py, Some(exc))
        }
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    /// Close once the queue is written (`close()` is this).
    fn write_eof(&self, py: Python<'_>) -> PyResult<()> {
        {
            let mut s = self.core.state();
            if s.closing {
                return Ok(());
            }
            s.closing = true;
            if !s.buffer.is_empty() {
                return Ok(());
            }
        }
        self.core.unwatch(py, false)?;
        self.core.schedule_connection_lost(py, None)
    }

    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self.close_with(py, None)
    }

    #[pyo3(signature = (exc=None))]
    fn _close(&self, py: Python<'_>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        self.close_with(py, exc)
    }

    fn get_write_buffer_size(&self) -> usize {
        self.core.state().buffer.len()
    }

    fn is_closing(&self) -> bool {
        self.core.state().closing
    }

    fn _set_water_marks(&self, py: Python<'_>, high: f64, low: f64) -> PyResult<()> {
        self.core.set_water_marks(py, high, low)
    }

    fn _maybe_pause_protocol(&self, py: Python<'_>) -> PyResult<()> {
        self.core.maybe_pause_protocol(py)
    }

    fn _maybe_resume_protocol(&self, py: Python<'_>) -> PyResult<()> {
        self.core.maybe_resume_protocol(py)
    }

    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) {
        let previous = {
            let mut s = self.core.state();
            s.protocol_connected = true;
            s.protocol.replace(protocol.clone().unbind())
        };
        drop(previous);
    }

    fn get_protocol<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.core.protocol(py)
    }

    /// Once `connection_lost` ran: stop watching the fd if a registration
    /// is left (asyncio registers the reader even after an early close),
    /// then drop every reference.
    fn _release(&self, py: Python<'_>) -> PyResult<()> {
        self.core.unwatch(py, false)?;
        self.core.unwatch(py, true)?;
        self.core.release();
        Ok(())
    }

    #[getter(_protocol_paused)]
    fn attr_protocol_paused(&self) -> bool {
        self.core.state().protocol_paused
    }

    #[getter(_conn_lost)]
    fn attr_conn_lost(&self) -> u32 {
        self.core.state().conn_lost
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.core.traverse(&visit, |_| Ok(()))
    }

    fn __clear__(&self) {
        self.core.clear(|_| Box::new(()));
    }
}
