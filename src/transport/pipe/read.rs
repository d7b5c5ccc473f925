//! The read end of a pipe (also a FIFO, a character device or a socket):
//! asyncio's `_UnixReadPipeTransport`.

use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::{call_soon, log_closed_by_peer, NoBuffer};
use crate::transport::base::{Core, KindState};
use crate::transport::socket_io::{self, os_error, would_block};

/// asyncio's `max_size`: the most one read asks for.
const MAX_READ: usize = 256 * 1024;

/// Nothing beyond the shared state: the protocol's `data_received` is
/// looked up at each read, as asyncio does (a protocol may rebind it).
#[derive(Default)]
pub struct ReadState;

impl KindState for ReadState {
    fn release(&mut self) -> Box<dyn std::any::Any> {
        Box::new(())
    }
}

#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct ReadPipeCore {
    core: Core<NoBuffer, ReadState>,
}

impl ReadPipeCore {
    /// End of file: stop reading, then `eof_received` and `connection_lost(None)`
    /// on the next iterations (the return value of `eof_received` is ignored).
    fn on_eof(&self, py: Python<'_>) -> PyResult<()> {
        log_closed_by_peer(&self.core, py)?;
        let protocol = {
            let mut s = self.core.state();
            s.closing = true;
            s.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        self.core.unwatch(py, false)?;
        // `self._protocol.eof_received` (an AttributeError on None, as there).
        let protocol = protocol.unwrap_or_else(|| py.None()).into_bound(py);
        call_soon(&self.core, protocol.getattr(pyo3::intern!(py, "eof_received"))?)?;
        self.core.schedule_connection_lost(py, None)
    }
}

/// The fd callback, called by the loop as a Rust function (`native_callbacks`).
pub(crate) fn read_ready(core: &Bound<'_, PyAny>) -> PyResult<()> {
    core.cast::<ReadPipeCore>()?.get()._read_ready(core.py())
}

#[pymethods]
impl ReadPipeCore {
    #[new]
    fn new(loop_: Bound<'_, PyAny>, pipe: Bound<'_, PyAny>, transport: Bound<'_, PyAny>, protocol: Bound<'_, PyAny>) -> PyResult<Self> {
        let this = ReadPipeCore { core: Core::new(&loop_, &pipe, &transport, ReadState)? };
        this.set_protocol(&protocol);
        Ok(this)
    }

    /// The fd is readable: one `read(2)`, handed to the protocol as one
    /// `bytes`. Errors of `data_received` propagate to the loop's handle,
    /// which reports them, as asyncio's transport does not catch them.
    fn _read_ready(&self, py: Python<'_>) -> PyResult<()> {
        let protocol = self.core.protocol(py).map_or_else(|| py.None(), Bound::unbind);
        let received = socket_io::with_read_buffer(MAX_READ, |buf| {
            socket_io::read_fd(self.core.fd(), buf).map(|n| (n > 0).then(|| PyBytes::new(py, &buf[..n])))
        });
        match received {
            Ok(Some(data)) => protocol.bind(py).call_method1(pyo3::intern!(py, "data_received"), (data,)).map(drop),
            Ok(None) => self.on_eof(py),
            Err(e) if would_block(&e) => Ok(()),
            Err(e) => self.core.fatal_error(py, os_error(e), "Fatal read error on pipe transport"),
        }
    }

    /// Start reading once `connection_made` has run (3.11+: unless paused or
    /// closed meanwhile).
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().core.start_reading(slf.as_any())
    }

    fn is_reading(&self) -> bool {
        self.core.state().is_reading()
    }

    fn pause_reading(&self, py: Python<'_>) -> PyResult<()> {
        self.core.pause_reading(py)
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().core.resume_reading(slf.as_any())
    }

    fn is_closing(&self) -> bool {
        self.core.state().closing
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if self.core.state().closing {
            return Ok(());
        }
        self._close(py, None)
    }

    /// Stop reading; `connection_lost(exc)` on the next iteration.
    #[pyo3(signature = (exc))]
    fn _close(&self, py: Python<'_>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        self.core.state().closing = true;
        self.core.unwatch(py, false)?;
        self.core.schedule_connection_lost(py, exc)
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
    /// is left (Python 3.10 registers the reader even after an early
    /// close), then drop every reference.
    fn _release(&self, py: Python<'_>) -> PyResult<()> {
        self.core.unwatch(py, false)?;
        self.core.release();
        Ok(())
    }

    #[getter(_paused)]
    fn attr_paused(&self) -> bool {
        self.core.state().paused
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.core.traverse(&visit, |_| Ok(()))
    }

    fn __clear__(&self) {
        self.core.clear(|_| Box::new(()));
    }
}
