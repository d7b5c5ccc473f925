//! The handshake steps of asyncio's `SSLProtocol` (3.11+) and its state
//! transitions, for `SSLProtocolCore` (`protocol.rs`): `_set_state`,
//! `_start_handshake`, `_do_handshake` and the success of
//! `_on_handshake_complete`. They run a few times per connection, but each
//! was several Python frames, and each `SSLWantReadError` of the handshake
//! unwound through two of them. What is rare (debug mode, a failed
//! handshake, a refused transition) is asyncio's own method, called from
//! here.

use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

use super::protocol::{State, Tls};

/// Whether asyncio's `_set_state` lets the protocol go from `from` to `to`.
fn transition_allowed(from: State, to: State) -> bool {
    matches!(
        (from, to),
        (_, State::Unwrapped)
            | (State::Unwrapped, State::DoHandshake)
            | (State::DoHandshake, State::Wrapped)
            | (State::Wrapped, State::Flushing)
            | (State::Flushing, State::Shutdown)
    )
}

impl<'py> Tls<'_, 'py> {
    /// `self.<handle> = self._loop.call_later(self.<timeout>, self.<check>)`
    pub(super) fn start_timeout(&self, timeout: &Bound<'py, PyString>, check: &Bound<'py, PyString>, handle: &Bound<'py, PyString>) -> PyResult<()> {
        let args = (self.slf.getattr(timeout)?, self.slf.getattr(check)?);
        let timer = self.loop_().call_method1(intern!(self.py, "call_later"), args)?;
        self.slf.setattr(handle, timer)
    }

    /// Cancel the timer `self.<handle>`, if any, and forget it.
    pub(super) fn cancel_timeout(&self, handle: &Bound<'py, PyString>) -> PyResult<()> {
        let timer = self.slf.getattr(handle)?;
        if !timer.is_none() {
            timer.call_method0(intern!(self.py, "cancel"))?;
            self.slf.setattr(handle, self.py.None())?;
        }
        Ok(())
    }

    /// asyncio's own `SSLProtocol.<method>(self, *args)`.
    pub(super) fn asyncio_method(&self, method: &Bound<'py, PyString>, args: &[Bound<'py, PyAny>]) -> PyResult<()> {
        let function = self.names.asyncio_protocol.bind(self.py).getattr(method)?;
        let all: Vec<_> = std::iter::once(self.slf.clone().into_any()).chain(args.iter().cloned()).collect();
        function.call1(PyTuple::new(self.py, all)?).map(drop)
    }

    pub(super) fn debug(&self) -> PyResult<bool> {
        self.loop_().call_method0(intern!(self.py, "get_debug"))?.is_truthy()
    }

    /// Go to state `to` if asyncio allows it; else the state it stays in.
    fn transition(&self, to: State) -> Result<(), State> {
        let mut f = self.fields();
        if !transition_allowed(f.state, to) {
            return Err(f.state);
        }
        f.state = to;
        Ok(())
    }

    /// `ssl.SSLError`
    pub(super) fn ssl_error(&self) -> &Bound<'py, PyAny> {
        self.names.ssl_error.bind(self.py)
    }

    /// `_set_state(new_state)`; a refused transition raises asyncio's error.
    pub(super) fn set_state(&self, to: State) -> PyResult<()> {
        let Err(from) = self.transition(to) else { return Ok(()) };
        let (from, to) = (self.state_member(from).str()?, self.state_member(to).str()?);
        Err(PyRuntimeError::new_err(format!("cannot switch state from {from} to {to}")))
    }

    /// `_start_handshake`
    pub(super) fn start_handshake(&self) -> PyResult<()> {
        let py = self.py;
        if self.debug()? {
            return self.asyncio_method(intern!(py, "_start_handshake"), &[]);
        }
        self.slf.setattr(intern!(py, "_handshake_start_time"), py.None())?;
        self.set_state(State::DoHandshake)?;
        self.start_timeout(
            intern!(py, "_ssl_handshake_timeout"),
            intern!(py, "_check_handshake_timeout"),
            intern!(py, "_handshake_timeout_handle"),
        )?;
        self.do_handshake()
    }

    /// `_do_handshake`
    pub(super) fn do_handshake(&self) -> PyResult<()> {
        let py = self.py;
        let outcome = match self.ssl_c().call_method0(intern!(py, "do_handshake")) {
            Ok(_) => py.None().into_bound(py),
            Err(e) if self.is_again(&e) => return self.process_outgoing(),
            Err(e) if e.matches(py, self.ssl_error())? => e.into_value(py).into_bound(py).into_any(),
            Err(e) => return Err(e),
        };
        self.slf.call_method1(intern!(py, "_on_handshake_complete"), (outcome,)).map(drop)
    }

    /// `_on_handshake_complete(handshake_exc)`: a successful handshake
    /// here; a failed one, or any in debug mode (which logs its duration),
    /// is asyncio's method.
    pub(super) fn on_handshake_complete(&self, handshake_exc: &Bound<'py, PyAny>) -> PyResult<()> {
        let py = self.py;
        let method = intern!(py, "_on_handshake_complete");
        if !handshake_exc.is_none() || self.debug()? {
            return self.asyncio_method(method, std::slice::from_ref(handshake_exc));
        }
        self.cancel_timeout(intern!(py, "_handshake_timeout_handle"))?;
        if self.transition(State::Wrapped).is_err() {
            // asyncio's method raises on the transition and reports the failure.
            return self.asyncio_method(method, &[py.None().into_bound(py)]);
        }
        let (sslobj, ssl_c) = (self.sslobj(), self.ssl_c());
        let peercert = match ssl_c.call_method1(intern!(py, "getpeercert"), (false,)) {
            Ok(peercert) => peercert,
            // asyncio's method reports it as it would have.
            Err(e) => return self.asyncio_method(method, &[e.into_value(py).into_bound(py).into_any()]),
        };
        let cipher = ssl_c.call_method0(intern!(py, "cipher"))?;
        let compression = ssl_c.call_method0(intern!(py, "compression"))?;
        let extra = self.slf.getattr(intern!(py, "_extra"))?;
        extra.set_item("peercert", peercert)?;
        extra.set_item("cipher", cipher)?;
        extra.set_item("compression", compression)?;
        extra.set_item("ssl_object", sslobj)?;
        let names = self.names;
        let app_state = intern!(py, "_app_state");
        if self.slf.getattr(app_state)?.is(names.app_state_init.bind(py)) {
            self.slf.setattr(app_state, names.app_state_con_made.bind(py))?;
            let app_transport = self.slf.call_method0(intern!(py, "_get_app_transport"))?;
            self.app_protocol().call_method1(intern!(py, "connection_made"), (app_transport,))?;
        }
        self.slf.call_method0(intern!(py, "_wakeup_waiter"))?;
        self.do_read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_are_asyncios() {
        use State::*;
        let allowed: Vec<(State, State)> = State::ALL
            .iter()
            .flat_map(|&from| State::ALL.iter().map(move |&to| (from, to)))
            .filter(|&(from, to)| transition_allowed(from, to))
            .collect();
        let mut expected: Vec<(State, State)> = State::ALL.iter().map(|&from| (from, Unwrapped)).collect();
        expected.extend([(Unwrapped, DoHandshake), (DoHandshake, Wrapped), (Wrapped, Flushing), (Flushing, Shutdown)]);
        assert_eq!(allowed.len(), expected.len());
        assert!(expected.iter().all(|pair| allowed.contains(pair)));
    }
}
