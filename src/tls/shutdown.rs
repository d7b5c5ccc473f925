//! The shutdown steps of asyncio's `SSLProtocol` (3.11+), for
//! `SSLProtocolCore` (`protocol.rs`): `eof_received`, `_start_shutdown`,
//! `_do_flush`, `_do_shutdown` and `_on_shutdown_complete`, step for step
//! as asyncio's, which ran as several Python frames at the end of every
//! connection. Debug mode (which logs) and a shutdown before the handshake
//! ended (whose abort differs between versions) are asyncio's methods.

use pyo3::exceptions::PyException;
use pyo3::intern;
use pyo3::prelude::*;

use super::protocol::{State, Tls};

impl<'py> Tls<'_, 'py> {
    /// `eof_received()`: True if the app protocol keeps reading paused.
    pub(super) fn eof_received(&self) -> PyResult<Option<bool>> {
        let py = self.py;
        if self.debug()? {
            return self.asyncio_method(intern!(py, "eof_received"), &[]).map(|_| None);
        }
        self.slf.setattr(intern!(py, "_eof_received"), true)?;
        let result = (|| -> PyResult<Option<bool>> {
            match self.state() {
                State::DoHandshake => {
                    let reset = py.get_type::<pyo3::exceptions::PyConnectionResetError>();
                    self.slf.call_method1(intern!(py, "_on_handshake_complete"), (reset,))?;
                }
                State::Wrapped => {
                    self.set_state(State::Flushing)?;
                    if self.fields().app_reading_paused {
                        return Ok(Some(true));
                    }
                    self.do_flush()?;
                }
                State::Flushing => {
                    self.do_write()?;
                    self.set_state(State::Shutdown)?;
                    self.do_shutdown()?;
                }
                State::Shutdown => self.do_shutdown()?,
                State::Unwrapped => {}
            }
            Ok(None)
        })();
        if let Err(e) = &result {
            if e.is_instance_of::<PyException>(py) {
                self.transport().call_method0(intern!(py, "close"))?;
            }
        }
        result
    }

    /// `_start_shutdown`
    pub(super) fn start_shutdown(&self) -> PyResult<()> {
        let py = self.py;
        match self.state() {
            State::Flushing | State::Shutdown | State::Unwrapped => return Ok(()),
            State::DoHandshake => return self.asyncio_method(intern!(py, "_start_shutdown"), &[]),
            State::Wrapped => {}
        }
        let app_transport = self.slf.getattr(intern!(py, "_app_transport"))?;
        if !app_transport.is_none() {
            app_transport.setattr(intern!(py, "_closed"), true)?;
        }
        self.set_state(State::Flushing)?;
        self.start_timeout(
            intern!(py, "_ssl_shutdown_timeout"),
            intern!(py, "_check_shutdown_timeout"),
            intern!(py, "_shutdown_timeout_handle"),
        )?;
        self.do_flush()
    }

    /// `_do_flush`
    pub(super) fn do_flush(&self) -> PyResult<()> {
        self.do_read()?;
        self.set_state(State::Shutdown)?;
        self.do_shutdown()
    }

    /// `_do_shutdown`: close_notify, unless the peer's EOF came first.
    pub(super) fn do_shutdown(&self) -> PyResult<()> {
        let py = self.py;
        if !self.slf.getattr(intern!(py, "_eof_received"))?.is_truthy()? {
            // `self._sslobj.unwrap()`, which is the `_ssl` object's shutdown().
            let unwrapped = match self.ssl_c_only() {
                Some(ssl_c) => ssl_c.call_method0(intern!(py, "shutdown")),
                None => self.sslobj().call_method0(intern!(py, "unwrap")),
            };
            match unwrapped {
                Ok(_) => {}
                Err(e) if self.is_again(&e) => return self.process_outgoing(),
                Err(e) if e.matches(py, self.ssl_error())? => {
                    return self.on_shutdown_complete(&e.into_value(py).into_bound(py).into_any());
                }
                Err(e) => return Err(e),
            }
        }
        self.process_outgoing()?;
        self.call(intern!(py, "_call_eof_received"))?;
        self.on_shutdown_complete(&py.None().into_bound(py))
    }

    /// `_on_shutdown_complete(shutdown_exc)`
    pub(super) fn on_shutdown_complete(&self, shutdown_exc: &Bound<'py, PyAny>) -> PyResult<()> {
        let py = self.py;
        self.cancel_timeout(intern!(py, "_shutdown_timeout_handle"))?;
        if shutdown_exc.is_truthy()? {
            self.slf.call_method1(intern!(py, "_fatal_error"), (shutdown_exc,)).map(drop)
        } else {
            let close = self.transport().getattr(intern!(py, "close"))?;
            self.loop_().call_method1(intern!(py, "call_soon"), (close,)).map(drop)
        }
    }
}
