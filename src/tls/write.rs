//! The writing side of `SSLProtocolCore` (`protocol.rs`): app data
//! encrypted (`_write_appdata`, `_do_write`), the records handed to the
//! transport (`_process_outgoing`), and the app protocol's writing paused
//! while too much waits (`_control_app_writing`).

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PySlice, PyTuple};

use super::c_calls;
use super::flow::{flow_change, FlowChange};
use super::protocol::{bound, State, Tls};
use crate::transport::base::must_propagate;

/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: i64 = 5;

impl<'py> Tls<'_, 'py> {
    /// The first check of `_write_appdata`: after the shutdown began, writes
    /// are dropped and counted (and logged past a threshold). True if dropped.
    fn write_dropped(&self, state: State) -> PyResult<bool> {
        if !matches!(state, State::Flushing | State::Shutdown | State::Unwrapped) {
            return Ok(false);
        }
        let conn_lost = {
            let mut f = self.fields();
            f.conn_lost += 1;
            f.conn_lost - 1
        };
        if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
            self.names.logger.call_method1(self.py, intern!(self.py, "warning"), ("SSL connection is closed",))?;
        }
        Ok(true)
    }

    /// Add `data` to the backlog (`_write_backlog.append`, `_write_buffer_size += n`).
    fn queue(&self, backlog: &Bound<'py, PyAny>, data: Bound<'py, PyAny>, size: isize) -> PyResult<()> {
        backlog.call_method1(intern!(self.py, "append"), (data,))?;
        self.fields().write_buffer_size += size;
        Ok(())
    }

    /// `_write_appdata(list_of_data)`
    pub(super) fn write_appdata(&self, list_of_data: &Bound<'py, PyAny>) -> PyResult<()> {
        let state = self.state();
        if self.write_dropped(state)? {
            return Ok(());
        }
        let backlog = bound(self.py, &self.fields().write_backlog);
        for data in list_of_data.try_iter()? {
            let data = data?;
            let len = data.len()? as isize;
            self.queue(&backlog, data, len)?;
        }
        if state == State::Wrapped {
            let result = self.do_write();
            return self.fatal_error_on(result, "Fatal error on SSL protocol");
        }
        Ok(())
    }

    /// `_write_appdata((data,))`, encrypting `data` at once when the
    /// connection is up and nothing waits before it; the backlog is used
    /// only if the SSL object does not take all of it.
    pub(super) fn write_one(&self, data: &Bound<'py, PyAny>) -> PyResult<()> {
        let py = self.py;
        let (state, backlog) = {
            let f = self.fields();
            (f.state, bound(py, &f.write_backlog))
        };
        if state != State::Wrapped || backlog.is_truthy()? {
            return self.write_appdata(PyTuple::new(py, [data])?.as_any());
        }
        let len = data.len()? as isize;
        let result = match c_calls::ssl_write(&self.ssl_c(), data).and_then(|c| c.extract::<isize>()) {
            Ok(count) if count >= len => self.send_records(count > 0),
            // Part of it: the rest waits in the backlog, as asyncio's loop leaves it.
            Ok(count) => (|| {
                let rest = data.get_item(PySlice::new(py, count, isize::MAX, 1))?;
                self.queue(&backlog, rest, len - count)?;
                self.do_write()
            })(),
            Err(e) => {
                self.queue(&backlog, data.clone(), len)?;
                if self.is_again(&e) {
                    self.process_outgoing()
                } else {
                    Err(e)
                }
            }
        };
        self.fatal_error_on(result, "Fatal error on SSL protocol")
    }

    /// `_do_write`: encrypt the backlog, then hand the records on.
    pub(super) fn do_write(&self) -> PyResult<()> {
        let py = self.py;
        let (ssl, backlog) = (self.ssl_c(), bound(py, &self.fields().write_backlog));
        let mut encrypted = false;
        while backlog.is_truthy()? {
            let data = backlog.get_item(0)?;
            let count: isize = match c_calls::ssl_write(&ssl, &data) {
                Ok(c) => c.extract()?,
                Err(e) if self.is_again(&e) => break,
                Err(e) => return Err(e),
            };
            encrypted |= count > 0;
            let len = data.len()? as isize;
            if count < len {
                backlog.set_item(0, data.get_item(PySlice::new(py, count, isize::MAX, 1))?)?;
                self.fields().write_buffer_size -= count;
            } else {
                backlog.del_item(0)?;
                self.fields().write_buffer_size -= len;
            }
        }
        self.send_records(encrypted)
    }

    /// `_process_outgoing`: the encrypted records to the transport.
    pub(super) fn process_outgoing(&self) -> PyResult<()> {
        self.send_records(false)
    }

    /// [`process_outgoing`](Self::process_outgoing); `encrypted`: the SSL
    /// object has just encrypted app data, so the BIO holds records and is
    /// read without asking for its size first.
    fn send_records(&self, encrypted: bool) -> PyResult<()> {
        let py = self.py;
        let (paused, outgoing, transport) = {
            let f = self.fields();
            (f.ssl_writing_paused, bound(py, &f.outgoing), bound(py, &f.transport))
        };
        if paused {
            return self.control_app_writing(self.pending(&outgoing)?);
        }
        // asyncio reads the BIO even when it is empty; nothing differs.
        if encrypted || self.pending(&outgoing)? > 0 {
            let data = c_calls::bio_read(&outgoing)?;
            if data.len()? > 0 {
                transport.call_method1(intern!(py, "write"), (data,))?;
            }
        }
        // Read out: only this protocol's own SSL calls refill the BIO.
        self.control_app_writing(0)
    }

    /// `_control_app_writing`: pause or resume the app protocol's writing.
    /// (`outgoing_pending`: what the outgoing BIO holds.)
    pub(super) fn control_app_writing(&self, outgoing_pending: usize) -> PyResult<()> {
        let py = self.py;
        let size = (outgoing_pending as isize + self.fields().write_buffer_size) as f64;
        let (change, app) = {
            let mut f = self.fields();
            let change = flow_change(size, f.outgoing_high_water.value, f.outgoing_low_water.value, f.app_writing_paused);
            match change {
                FlowChange::Keep => return Ok(()),
                FlowChange::Pause => f.app_writing_paused = true,
                FlowChange::Resume => f.app_writing_paused = false,
            }
            (change, bound(py, &f.app_protocol))
        };
        let (method, message) = match change {
            FlowChange::Pause => (intern!(py, "pause_writing"), "protocol.pause_writing() failed"),
            _ => (intern!(py, "resume_writing"), "protocol.resume_writing() failed"),
        };
        match app.call_method0(method) {
            Ok(_) => Ok(()),
            Err(e) if must_propagate(py, &e) => Err(e),
            Err(e) => {
                let context = PyDict::new(py);
                context.set_item("message", message)?;
                context.set_item("exception", e.into_value(py))?;
                context.set_item("transport", self.slf.getattr(intern!(py, "_app_transport"))?)?;
                context.set_item("protocol", self.slf)?;
                let loop_ = bound(py, &self.fields().loop_);
                loop_.call_method1(intern!(py, "call_exception_handler"), (context,)).map(drop)
            }
        }
    }
}
