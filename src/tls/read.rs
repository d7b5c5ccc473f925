//! The reading side of `SSLProtocolCore` (`protocol.rs`): records
//! decrypted and handed to the app protocol (`_do_read` and its copied and
//! buffered variants), and the transport's reading paused while the
//! incoming BIO holds too much (`_control_ssl_reading`).

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PySlice};

use super::c_calls;
use super::flow::{flow_change, FlowChange};
use super::protocol::{bound, State, Tls};
use crate::transport::stream_reader;

/// What one `read()` asks for: one byte more than a TLS record's most
/// plaintext, the most one `SSL_read` returns, so that a read which got
/// less than this took all the record had. (asyncio asks for 256 KiB, so
/// each read allocates that much before shrinking it.)
const READ_SIZE: usize = 16 * 1024 + 1;

/// READ_SIZE as an int, made once (not for each record).
fn read_size(py: Python<'_>) -> &Bound<'_, PyAny> {
    static READ_SIZE_INT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    READ_SIZE_INT.get_or_init(py, || READ_SIZE.into_pyobject(py).map_or_else(|e| match e {}, |n| n.into_any().unbind())).bind(py)
}

impl<'py> Tls<'_, 'py> {
    /// `_do_read`
    pub(super) fn do_read(&self) -> PyResult<()> {
        let (state, app_reading_paused, is_buffer) = {
            let f = self.fields();
            (f.state, f.app_reading_paused, f.app_protocol_is_buffer)
        };
        if !matches!(state, State::Wrapped | State::Flushing) {
            return Ok(());
        }
        let result = (|| {
            // Whether the read found the BIO empty, which no code run since
            // (the app protocol's, the writes) can have refilled: only the
            // transport's next read does.
            let mut drained = false;
            if !app_reading_paused {
                if is_buffer {
                    self.read_buffered()?;
                } else {
                    drained = self.read_copied()?;
                }
                let backlog = bound(self.py, &self.fields().write_backlog);
                if backlog.is_truthy()? {
                    self.do_write()?;
                } else {
                    self.process_outgoing()?;
                }
            }
            self.control_ssl_reading(drained.then_some(0))
        })();
        self.fatal_error_on(result, "Fatal error on SSL protocol")
    }

    /// `_do_read__copied`: everything decrypted in one `data_received`,
    /// then, if the peer closed (close_notify), EOF and shutdown. True if
    /// the reads stopped on an empty BIO.
    fn read_copied(&self) -> PyResult<bool> {
        let py = self.py;
        let (ssl, incoming) = (self.ssl_c(), bound(py, &self.fields().incoming));
        // Most reads take one chunk: it needs no vector.
        let mut first: Option<Bound<'py, PyBytes>> = None;
        let mut more: Vec<Bound<'py, PyBytes>> = Vec::new();
        let (mut closed, mut drained) = (false, false);
        let size = read_size(py);
        loop {
            let chunk = match c_calls::ssl_read(&ssl, size) {
                Ok(c) => c.cast_into::<PyBytes>()?,
                Err(e) if self.is_again(&e) => break,
                Err(e) => return Err(e),
            };
            let n = chunk.as_bytes().len();
            if n == 0 {
                closed = true;
                break;
            }
            match first {
                None => first = Some(chunk),
                Some(_) => more.push(chunk),
            }
            // All the SSL object had, and no bytes left in the BIO: the
            // next read would raise SSLWantReadError, so stop here.
            if n < READ_SIZE && self.pending(&incoming)? == 0 {
                drained = true;
                break;
            }
        }
        let data = match first {
            Some(first) if !more.is_empty() => {
                let joined: Vec<u8> = std::iter::once(&first).chain(&more).flat_map(|c| c.as_bytes()).copied().collect();
                Some(PyBytes::new(py, &joined))
            }
            first => first,
        };
        if let Some(data) = data {
            let app = bound(py, &self.fields().app_protocol);
            if stream_reader::is_plain_stream_protocol(&app)? {
                stream_reader::data_received(&app, data.as_bytes())?;
            } else {
                app.call_method1(intern!(py, "data_received"), (data,))?;
            }
        }
        if closed {
            self.call(intern!(py, "_call_eof_received"))?;
            self.start_shutdown()?;
        }
        Ok(drained)
    }

    /// `_do_read__buffered`: decrypt straight into the app protocol's buffer.
    fn read_buffered(&self) -> PyResult<()> {
        let py = self.py;
        let (ssl, incoming) = (self.ssl_c(), bound(py, &self.fields().incoming));
        let buf = self.slf.getattr(intern!(py, "_app_protocol_get_buffer"))?.call1((self.pending(&incoming)?,))?;
        let wants = buf.len()?;
        let mut offset = 0;
        let mut count = 1;
        let outcome = (|| -> PyResult<()> {
            loop {
                let asked = wants - offset;
                let target = if offset == 0 { buf.clone() } else { buf.get_item(PySlice::new(py, offset as isize, isize::MAX, 1))? };
                count = c_calls::ssl_read_into(&ssl, asked, &target)?.extract()?;
                if count == 0 {
                    return Ok(());
                }
                offset += count;
                if offset >= wants {
                    // The buffer is full: read the rest at the next iteration.
                    let do_read = self.slf.getattr(intern!(py, "_do_read"))?;
                    let loop_ = bound(py, &self.fields().loop_);
                    return loop_.call_method1(intern!(py, "call_soon"), (do_read,)).map(drop);
                }
                if count < asked && self.pending(&incoming)? == 0 {
                    return Ok(()); // where SSLWantReadError would end it
                }
            }
        })();
        match outcome {
            Err(e) if !self.is_again(&e) => return Err(e),
            _ => {}
        }
        if offset > 0 {
            self.slf.getattr(intern!(py, "_app_protocol_buffer_updated"))?.call1((offset,))?;
        }
        if count == 0 {
            self.call(intern!(py, "_call_eof_received"))?;
            self.start_shutdown()?;
        }
        Ok(())
    }

    /// `_control_ssl_reading`: pause or resume the transport's reading
    /// while the BIO holds too many undecrypted bytes (`known_pending`,
    /// when the caller knows how many).
    pub(super) fn control_ssl_reading(&self, known_pending: Option<usize>) -> PyResult<()> {
        let py = self.py;
        let size = match known_pending {
            Some(n) => n,
            None => self.pending(&bound(py, &self.fields().incoming))?,
        } as f64;
        let (method, transport) = {
            let mut f = self.fields();
            let method = match flow_change(size, f.incoming_high_water.value, f.incoming_low_water.value, f.ssl_reading_paused) {
                FlowChange::Keep => return Ok(()),
                FlowChange::Pause => intern!(py, "pause_reading"),
                FlowChange::Resume => intern!(py, "resume_reading"),
            };
            f.ssl_reading_paused = !f.ssl_reading_paused;
            (method, bound(py, &f.transport))
        };
        transport.call_method0(method).map(drop)
    }
}
