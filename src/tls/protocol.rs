//! `SSLProtocolCore`: the base class that puts the per-record methods of
//! asyncio's `SSLProtocol` (Python 3.11+) and their state in Rust (its
//! reading and writing sides: `read.rs`, `write.rs`; its handshake and
//! shutdown steps: `handshake.rs`, `shutdown.rs`).
//!
//! `ferroloop._sslproto.SSLProtocol` derives from this class first and
//! from asyncio's `SSLProtocol` second. This class's methods come first in
//! that order, so `buffer_updated`, `_do_read`, `_do_write`,
//! `_process_outgoing`, `_write_appdata`, `_control_app_writing` and
//! `_control_ssl_reading` are these, and the state they use (`_state`,
//! `_transport`, `_write_buffer_size`, the paused flags, the water marks,
//! ...) are typed fields here behind attribute descriptors, which asyncio's
//! own code (`__init__`, timeouts, `connection_lost`, error reports)
//! reads and sets as it always did. `_app_write` is the app transport's
//! `write`. Each method does what asyncio's does,
//! step for step. What differs is the cost: the `_ssl` object's C methods
//! are called directly (not through `ssl.SSLObject`'s Python wrappers),
//! reads ask for a record's size, not 256 KiB, and the read loop stops
//! when the SSL object has nothing left instead of on the
//! `SSLWantReadError` asyncio provokes each time.

use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PySlice, PyString, PyTuple};

use super::c_calls;

/// asyncio's names the Rust methods use, looked up once.
pub(super) struct AsyncioNames {
    /// The `SSLProtocolState` members, in [`State`] order.
    states: [Py<PyAny>; 5],
    again_errors: Py<PyAny>,
    pub(super) logger: Py<PyAny>,
    /// asyncio's `SSLProtocol`, whose own methods take the rare cases.
    pub(super) asyncio_protocol: Py<PyAny>,
    pub(super) ssl_error: Py<PyAny>,
    /// `AppProtocolState.STATE_INIT` and `STATE_CON_MADE`.
    pub(super) app_state_init: Py<PyAny>,
    pub(super) app_state_con_made: Py<PyAny>,
}

static ASYNCIO: PyOnceLock<AsyncioNames> = PyOnceLock::new();

fn asyncio_names(py: Python<'_>) -> PyResult<&AsyncioNames> {
    ASYNCIO.get_or_try_init(py, || {
        let sslproto = py.import("asyncio.sslproto")?;
        let state = sslproto.getattr("SSLProtocolState")?;
        let member = |s: State| state.getattr(s.name()).map(Bound::unbind);
        let app_state = sslproto.getattr("AppProtocolState")?;
        Ok(AsyncioNames {
            states: [member(State::Unwrapped)?, member(State::DoHandshake)?, member(State::Wrapped)?, member(State::Flushing)?, member(State::Shutdown)?],
            again_errors: sslproto.getattr("SSLAgainErrors")?.unbind(),
            logger: py.import("asyncio.log")?.getattr("logger")?.unbind(),
            asyncio_protocol: sslproto.getattr("SSLProtocol")?.unbind(),
            ssl_error: py.import("ssl")?.getattr("SSLError")?.unbind(),
            app_state_init: app_state.getattr("STATE_INIT")?.unbind(),
            app_state_con_made: app_state.getattr("STATE_CON_MADE")?.unbind(),
        })
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum State {
    #[default]
    Unwrapped,
    DoHandshake,
    Wrapped,
    Flushing,
    Shutdown,
}

impl State {
    pub(super) const ALL: [State; 5] = [State::Unwrapped, State::DoHandshake, State::Wrapped, State::Flushing, State::Shutdown];

    fn name(self) -> &'static str {
        match self {
            State::Unwrapped => "UNWRAPPED",
            State::DoHandshake => "DO_HANDSHAKE",
            State::Wrapped => "WRAPPED",
            State::Flushing => "FLUSHING",
            State::Shutdown => "SHUTDOWN",
        }
    }
}

/// A water mark: the object asyncio computed (returned as is by the
/// getters) and its value for comparisons.
#[derive(Default)]
pub(super) struct Mark {
    object: Option<Py<PyAny>>,
    pub(super) value: f64,
}

impl Mark {
    fn get(&self, py: Python<'_>) -> Py<PyAny> {
        match &self.object {
            Some(o) => o.clone_ref(py),
            None => 0i32.into_pyobject(py).map(|o| o.into_any().unbind()).unwrap_or_else(|e| match e {}),
        }
    }

    fn set(&mut self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.value = value.extract()?;
        self.object = Some(value.clone().unbind());
        Ok(())
    }
}

/// asyncio's attributes that live here (named as asyncio names them).
#[derive(Default)]
pub(super) struct Fields {
    pub(super) state: State,
    pub(super) conn_lost: i64,
    pub(super) write_buffer_size: isize,
    pub(super) ssl_writing_paused: bool,
    pub(super) app_reading_paused: bool,
    pub(super) ssl_reading_paused: bool,
    pub(super) app_writing_paused: bool,
    pub(super) app_protocol_is_buffer: bool,
    pub(super) incoming_high_water: Mark,
    pub(super) incoming_low_water: Mark,
    pub(super) outgoing_high_water: Mark,
    pub(super) outgoing_low_water: Mark,
    pub(super) loop_: Option<Py<PyAny>>,
    pub(super) transport: Option<Py<PyAny>>,
    pub(super) app_protocol: Option<Py<PyAny>>,
    pub(super) write_backlog: Option<Py<PyAny>>,
    pub(super) incoming: Option<Py<PyAny>>,
    pub(super) outgoing: Option<Py<PyAny>>,
    /// `_sslobj`: the `ssl.SSLObject`.
    pub(super) sslobj: Option<Py<PyAny>>,
    /// Its `_sslobj`: the `_ssl` object whose C methods do the work.
    pub(super) ssl_c: Option<Py<PyAny>>,
}

#[pyclass(module = "ferroloop._ferroloop", subclass, frozen)]
pub struct SSLProtocolCore {
    fields: Mutex<Fields>,
}

/// `Option<Py<PyAny>>` → the object or a clear error (asyncio would fail
/// on `None` the same way: an AttributeError on NoneType).
pub(super) fn bound<'py>(py: Python<'py>, field: &Option<Py<PyAny>>) -> Bound<'py, PyAny> {
    match field {
        Some(o) => o.bind(py).clone(),
        None => py.None().into_bound(py),
    }
}

impl SSLProtocolCore {
    /// The fields; never held while Python code runs.
    fn fields(&self) -> MutexGuard<'_, Fields> {
        self.fields.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Incoming TLS bytes from a transport that reads into its own buffer
    /// (`transport::stream`): `self._incoming.write(data)`, which copies
    /// them into the BIO straight from that buffer.
    pub fn feed(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        let incoming = bound(py, &self.fields().incoming);
        c_calls::bio_write_from(&incoming, data)
    }

    /// What `buffer_updated` does once the bytes are in the BIO: the step
    /// of the current state.
    pub fn after_feed(slf: &Bound<'_, Self>) -> PyResult<()> {
        let tls = Tls::new(slf)?;
        match tls.state() {
            State::DoHandshake => tls.do_handshake(),
            State::Wrapped => tls.do_read(),
            State::Flushing => tls.do_flush(),
            State::Shutdown => tls.do_shutdown(),
            State::Unwrapped => Ok(()),
        }
    }

}

/// One call's view of a protocol.
pub(super) struct Tls<'a, 'py> {
    pub(super) py: Python<'py>,
    pub(super) slf: &'a Bound<'py, SSLProtocolCore>,
    pub(super) names: &'py AsyncioNames,
}

impl<'a, 'py> Tls<'a, 'py> {
    fn new(slf: &'a Bound<'py, SSLProtocolCore>) -> PyResult<Self> {
        Ok(Tls { py: slf.py(), slf, names: asyncio_names(slf.py())? })
    }

    pub(super) fn fields(&self) -> MutexGuard<'_, Fields> {
        self.slf.get().fields()
    }

    pub(super) fn state(&self) -> State {
        self.fields().state
    }

    /// The `SSLProtocolState` member of `state`.
    pub(super) fn state_member(&self, state: State) -> &Bound<'py, PyAny> {
        self.names.states[state as usize].bind(self.py)
    }

    /// The state whose member `value` is, if it is one.
    pub(super) fn state_of(&self, value: &Bound<'py, PyAny>) -> Option<State> {
        self.names.states.iter().position(|m| value.is(m.bind(self.py))).map(|i| State::ALL[i])
    }

    pub(super) fn loop_(&self) -> Bound<'py, PyAny> {
        bound(self.py, &self.fields().loop_)
    }

    pub(super) fn app_protocol(&self) -> Bound<'py, PyAny> {
        bound(self.py, &self.fields().app_protocol)
    }

    pub(super) fn transport(&self) -> Bound<'py, PyAny> {
        bound(self.py, &self.fields().transport)
    }

    pub(super) fn sslobj(&self) -> Bound<'py, PyAny> {
        bound(self.py, &self.fields().sslobj)
    }

    /// `self.<method>()`: one of asyncio's own steps.
    pub(super) fn call(&self, method: &Bound<'py, PyString>) -> PyResult<()> {
        self.slf.call_method0(method).map(drop)
    }

    /// `except Exception as ex: self._fatal_error(ex, message)`
    pub(super) fn fatal_error_on(&self, result: PyResult<()>, message: &str) -> PyResult<()> {
        match result {
            Err(e) if e.is_instance_of::<PyException>(self.py) => {
                self.slf.call_method1(intern!(self.py, "_fatal_error"), (e.into_value(self.py), message)).map(drop)
            }
            other => other,
        }
    }

    pub(super) fn is_again(&self, e: &PyErr) -> bool {
        e.matches(self.py, self.names.again_errors.bind(self.py)).unwrap_or(false)
    }

    pub(super) fn pending(&self, bio: &Bound<'py, PyAny>) -> PyResult<usize> {
        c_calls::bio_pending(bio)
    }

    /// The `_ssl` object, if the `SSLObject` has one (it always does
    /// unless replaced by something else).
    pub(super) fn ssl_c_only(&self) -> Option<Bound<'py, PyAny>> {
        self.fields().ssl_c.as_ref().map(|c| c.bind(self.py).clone())
    }

    pub(super) fn ssl_c(&self) -> Bound<'py, PyAny> {
        let f = self.fields();
        bound(self.py, if f.ssl_c.is_some() { &f.ssl_c } else { &f.sslobj })
    }
}

/// The `#[pymethods]` table: getter/setter pairs for asyncio's attributes
/// that live in [`Fields`] (objects, plain values, water marks), then the
/// methods given.
macro_rules! protocol_pymethods {
    (
        objects { $($oget:ident / $oset:ident => $ofield:ident as $oname:literal;)* }
        values { $($vget:ident / $vset:ident => $vfield:ident: $vty:ty as $vname:literal;)* }
        marks { $($mget:ident / $mset:ident => $mfield:ident as $mname:literal;)* }
        $($methods:tt)*
    ) => {
        #[pymethods]
        impl SSLProtocolCore {
            $(
                #[getter($oname)]
                fn $oget(&self, py: Python<'_>) -> Py<PyAny> {
                    bound(py, &self.fields().$ofield).unbind()
                }

                #[setter($oname)]
                fn $oset(&self, value: Bound<'_, PyAny>) {
                    let value = (!value.is_none()).then(|| value.unbind());
                    let previous = std::mem::replace(&mut self.fields().$ofield, value);
                    drop(previous);
                }
            )*
            $(
                #[getter($vname)]
                fn $vget(&self) -> $vty {
                    self.fields().$vfield
                }

                #[setter($vname)]
                fn $vset(&self, value: $vty) {
                    self.fields().$vfield = value;
                }
            )*
            $(
                #[getter($mname)]
                fn $mget(&self, py: Python<'_>) -> Py<PyAny> {
                    self.fields().$mfield.get(py)
                }

                #[setter($mname)]
                fn $mset(&self, value: Bound<'_, PyAny>) -> PyResult<()> {
                    self.fields().$mfield.set(&value)
                }
            )*

            $($methods)*
        }
    };
}

protocol_pymethods! {
    objects {
        get_loop / set_loop => loop_ as "_loop";
        get_transport / set_transport => transport as "_transport";
        get_app_protocol / set_app_protocol => app_protocol as "_app_protocol";
        get_write_backlog / set_write_backlog => write_backlog as "_write_backlog";
        get_incoming / set_incoming => incoming as "_incoming";
        get_outgoing / set_outgoing => outgoing as "_outgoing";
    }
    values {
        get_conn_lost / set_conn_lost => conn_lost: i64 as "_conn_lost";
        get_write_buffer_size / set_write_buffer_size => write_buffer_size: isize as "_write_buffer_size";
        get_ssl_writing_paused / set_ssl_writing_paused => ssl_writing_paused: bool as "_ssl_writing_paused";
        get_app_reading_paused / set_app_reading_paused => app_reading_paused: bool as "_app_reading_paused";
        get_ssl_reading_paused / set_ssl_reading_paused => ssl_reading_paused: bool as "_ssl_reading_paused";
        get_app_writing_paused / set_app_writing_paused => app_writing_paused: bool as "_app_writing_paused";
        get_app_protocol_is_buffer / set_app_protocol_is_buffer => app_protocol_is_buffer: bool as "_app_protocol_is_buffer";
    }
    marks {
        get_incoming_high_water / set_incoming_high_water => incoming_high_water as "_incoming_high_water";
        get_incoming_low_water / set_incoming_low_water => incoming_low_water as "_incoming_low_water";
        get_outgoing_high_water / set_outgoing_high_water => outgoing_high_water as "_outgoing_high_water";
        get_outgoing_low_water / set_outgoing_low_water => outgoing_low_water as "_outgoing_low_water";
    }

    /// Takes (and ignores) the arguments of asyncio's `__init__`, which
    /// runs next and sets the fields.
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        SSLProtocolCore { fields: Mutex::new(Fields::default()) }
    }

    #[getter(_state)]
    fn get_state(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let state = self.fields().state;
        Ok(asyncio_names(py)?.states[state as usize].clone_ref(py))
    }

    #[setter(_state)]
    fn set_state(slf: &Bound<'_, Self>, value: Bound<'_, PyAny>) -> PyResult<()> {
        let Some(state) = Tls::new(slf)?.state_of(&value) else {
            return Err(PyValueError::new_err(format!("not an SSLProtocolState: {}", value.repr()?)));
        };
        slf.get().fields().state = state;
        Ok(())
    }

    fn _set_state(slf: &Bound<'_, Self>, new_state: Bound<'_, PyAny>) -> PyResult<()> {
        let tls = Tls::new(slf)?;
        match tls.state_of(&new_state) {
            Some(state) => tls.set_state(state),
            None => tls.asyncio_method(intern!(slf.py(), "_set_state"), &[new_state]),
        }
    }

    fn _start_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        Tls::new(slf)?.start_handshake()
    }

    fn _do_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        Tls::new(slf)?.do_handshake()
    }

    fn _on_handshake_complete(slf: &Bound<'_, Self>, handshake_exc: Bound<'_, PyAny>) -> PyResult<()> {
        Tls::new(slf)?.on_handshake_complete(&handshake_exc)
    }

    fn eof_received(slf: &Bound<'_, Self>) -> PyResult<Option<bool>> {
        Tls::new(slf)?.eof_received()
    }

    fn _start_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        Tls::new(slf)?.start_shutdown()
    }

    fn _do_flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        Tls::new(slf)?.do_flush()
    }

    fn _do_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        Tls::new(slf)?.do_shutdown()
    }

    fn _on_shutdown_complete(slf: &Bound<'_, Self>, shutdown_exc: Bound<'_, PyAny>) -> PyResult<()> {
        Tls::new(slf)?.on_shutdown_complete(&shutdown_exc)
    }

    #[getter(_sslobj)]
    fn get_sslobj(&self, py: Python<'_>) -> Py<PyAny> {
        bound(py, &self.fields().sslobj).unbind()
    }

    /// The `ssl.SSLObject`, and the `_ssl` object inside it whose methods
    /// the hot paths call.
    #[setter(_sslobj)]
    fn set_sslobj(&self, value: Bound<'_, PyAny>) {
        let ssl_c = value.getattr(intern!(value.py(), "_sslobj")).ok().filter(|c| !c.is_none()).map(Bound::unbind);
        let previous = {
            let mut f = self.fields();
            (f.sslobj.replace(value.unbind()), std::mem::replace(&mut f.ssl_c, ssl_c))
        };
        drop(previous);
    }

    /// `buffer_updated(nbytes)`: the bytes asyncio's `get_buffer` lent.
    fn buffer_updated(slf: &Bound<'_, Self>, nbytes: isize) -> PyResult<()> {
        let py = slf.py();
        let view = slf.getattr(intern!(py, "_ssl_buffer_view"))?;
        let received = view.get_item(PySlice::new(py, 0, nbytes, 1))?;
        c_calls::bio_write(&bound(py, &slf.get().fields().incoming), &received)?;
        Self::after_feed(slf)
    }

    fn _do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        Tls::new(slf)?.do_read()
    }

    fn _do_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        Tls::new(slf)?.do_write()
    }

    fn _process_outgoing(slf: &Bound<'_, Self>) -> PyResult<()> {
        Tls::new(slf)?.process_outgoing()
    }

    fn _write_appdata(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        Tls::new(slf)?.write_appdata(list_of_data)
    }

    fn _control_app_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let tls = Tls::new(slf)?;
        let outgoing = bound(slf.py(), &slf.get().fields().outgoing);
        tls.control_app_writing(tls.pending(&outgoing)?)
    }

    fn _control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        Tls::new(slf)?.control_ssl_reading(None)
    }

    /// The app transport's `write(data)` (bound onto it by `_sslproto`):
    /// asyncio's checks, then `_write_appdata((data,))`.
    fn _app_write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if !(data.is_instance_of::<PyBytes>() || data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>()) {
            let type_name = data.get_type().name()?;
            return Err(PyTypeError::new_err(format!("data: expecting a bytes-like instance, got {type_name}")));
        }
        if !data.is_truthy()? {
            return Ok(());
        }
        Tls::new(slf)?.write_one(data)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Never blocks: a held lock means a call is under way, and not
        // visiting only keeps objects alive one collection longer.
        let Ok(f) = self.fields.try_lock() else { return Ok(()) };
        for field in [&f.loop_, &f.transport, &f.app_protocol, &f.write_backlog, &f.incoming, &f.outgoing, &f.sslobj, &f.ssl_c] {
            visit.call(field)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self.fields.try_lock().ok().map(|mut f| std::mem::take(&mut *f));
        drop(taken);
    }
}
