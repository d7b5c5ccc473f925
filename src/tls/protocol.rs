//! `SSLProtocolCore`: the base class that puts the per-record methods of
//! asyncio's `SSLProtocol` (Python 3.11+) and their state in Rust (its
//! handshake and shutdown steps: `handshake.rs`, `shutdown.rs`).
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
use super::flow::{flow_change, FlowChange};
use crate::transport::base::must_propagate;
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

/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: i64 = 5;

/// asyncio's names the Rust methods use, looked up once.
pub(super) struct AsyncioNames {
    /// The `SSLProtocolState` members, in [`State`] order.
    states: [Py<PyAny>; 5],
    again_errors: Py<PyAny>,
    logger: Py<PyAny>,
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
struct Mark {
    object: Option<Py<PyAny>>,
    value: f64,
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
    conn_lost: i64,
    write_buffer_size: isize,
    ssl_writing_paused: bool,
    pub(super) app_reading_paused: bool,
    ssl_reading_paused: bool,
    app_writing_paused: bool,
    app_protocol_is_buffer: bool,
    incoming_high_water: Mark,
    incoming_low_water: Mark,
    outgoing_high_water: Mark,
    outgoing_low_water: Mark,
    loop_: Option<Py<PyAny>>,
    transport: Option<Py<PyAny>>,
    app_protocol: Option<Py<PyAny>>,
    write_backlog: Option<Py<PyAny>>,
    incoming: Option<Py<PyAny>>,
    outgoing: Option<Py<PyAny>>,
    /// `_sslobj`: the `ssl.SSLObject`.
    sslobj: Option<Py<PyAny>>,
    /// Its `_sslobj`: the `_ssl` object whose C methods do the work.
    ssl_c: Option<Py<PyAny>>,
}

#[pyclass(module = "ferroloop._ferroloop", subclass, frozen)]
pub struct SSLProtocolCore {
    fields: Mutex<Fields>,
}

/// `Option<Py<PyAny>>` → the object or a clear error (asyncio would fail
/// on `None` the same way: an AttributeError on NoneType).
fn bound<'py>(py: Python<'py>, field: &Option<Py<PyAny>>) -> Bound<'py, PyAny> {
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
    fn fatal_error_on(&self, result: PyResult<()>, message: &str) -> PyResult<()> {
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

    fn pending(&self, bio: &Bound<'py, PyAny>) -> PyResult<usize> {
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

    // ----- reading -------------------------------------------------------------

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

    // ----- writing -------------------------------------------------------------

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
    fn write_appdata(&self, list_of_data: &Bound<'py, PyAny>) -> PyResult<()> {
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
    fn write_one(&self, data: &Bound<'py, PyAny>) -> PyResult<()> {
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

    // ----- flow control --------------------------------------------------------

    /// `_control_app_writing`: pause or resume the app protocol's writing.
    /// (`outgoing_pending`: what the outgoing BIO holds.)
    fn control_app_writing(&self, outgoing_pending: usize) -> PyResult<()> {
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

    /// `_control_ssl_reading`: pause or resume the transport's reading
    /// while the BIO holds too many undecrypted bytes (`known_pending`,
    /// when the caller knows how many).
    fn control_ssl_reading(&self, known_pending: Option<usize>) -> PyResult<()> {
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
