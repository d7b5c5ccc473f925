//! The datagram transport (UDP and Unix datagram sockets), as asyncio's
//! `_SelectorDatagramTransport`, step for step.
//!
//! For IPv4 and IPv6 the receive (`recvfrom` into the shared buffer, the
//! sender's address built as the socket module builds it, and reused while
//! the sender stays the same) and the send (`send`, or `sendto` to a numeric
//! address parsed once per address object) are system calls made here.
//! Other families, and addresses that need resolving, go through the
//! socket object's own `recvfrom`/`sendto`. The Python object users see is
//! `ferroloop._datagram.DatagramTransport`.

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString, PyTuple};
use socket2::SockAddr;

use super::base::{must_propagate, not_bytes_like, Core, KindState, WriteQueue};
use super::socket_io::{self, os_error, would_block};
use crate::sockaddr;

/// asyncio's `max_size`: the largest datagram received whole.
const MAX_DATAGRAM: usize = 256 * 1024;

/// Where a queued datagram goes.
enum Target {
    /// A connected socket: `send`.
    Connected,
    Address(SockAddr),
    /// An address only the socket module can take (a host name, a Unix path).
    Python(Py<PyAny>),
}

struct Datagram {
    data: Py<PyBytes>,
    target: Target,
    /// What it counts against the water marks.
    counted: usize,
}

#[derive(Default)]
pub struct DatagramQueue {
    items: VecDeque<Datagram>,
    size: usize,
}

impl WriteQueue for DatagramQueue {
    fn size(&self) -> usize {
        self.size
    }
}

/// What only the datagram transport keeps.
struct DatagramState {
    /// The `remote_addr` the endpoint was created with.
    address: Option<Py<PyAny>>,
    /// `get_extra_info('peername')` is set: datagrams go out with `send`.
    connected: bool,
    /// IPv4 or IPv6: addresses are handled here, not by the socket module.
    inet: bool,
    /// Python 3.13 counts 8 header bytes per queued datagram; before 3.13
    /// empty datagrams are not sent at all.
    header_bytes: usize,
    send_empty: bool,
    /// The last sender and its Python address, reused while it repeats.
    last_from: Option<(SockAddr, Py<PyAny>)>,
    /// The last destination object and what it parsed to.
    last_to: Option<(Py<PyAny>, SockAddr)>,
}

impl KindState for DatagramState {
    fn release(&mut self) -> Box<dyn std::any::Any> {
        Box::new((self.last_from.take(), self.last_to.take()))
    }

    /// (`address` is a tuple of str and int, or a str: never in a cycle)
    fn keeps_references(&self) -> bool {
        false
    }
}

#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct DatagramTransportCore {
    core: Core<DatagramQueue, DatagramState>,
}

impl DatagramTransportCore {
    /// The protocol the transport calls from now on.
    fn store_protocol(&self, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let previous = {
            let mut s = self.core.state();
            s.protocol_connected = true;
            s.protocol.replace(protocol.clone().unbind())
        };
        drop(previous);
        Ok(())
    }
}

/// The sender's address as the socket module's `recvfrom` reports it:
/// `(host, port)` for IPv4, `(host, port, flowinfo, scope_id)` for IPv6
/// (the host as inet_ntop writes it: a link-local one has no `%scope`).
fn python_address(py: Python<'_>, addr: &SockAddr) -> PyResult<Py<PyAny>> {
    if !addr.is_ipv4() && !addr.is_ipv6() {
        return Err(PyOSError::new_err("unexpected address family"));
    }
    // SAFETY: socket2's SockAddrStorage is repr(transparent) over libc's
    // sockaddr_storage, and `addr` holds one initialised up to `len()`.
    let storage = unsafe { &*addr.as_ptr().cast::<libc::sockaddr_storage>() };
    Ok(sockaddr::python_address(py, storage, addr.len())?.unbind())
}

/// A numeric IPv4/IPv6 address tuple, without the resolver; None for
/// anything the socket module has to work out.
fn parse_address(addr: &Bound<'_, PyAny>) -> Option<SockAddr> {
    let t = addr.cast::<PyTuple>().ok()?;
    let host = t.get_item(0).ok()?;
    let host = host.cast::<PyString>().ok()?.to_str().ok()?;
    let port: u16 = t.get_item(1).ok()?.extract().ok()?;
    match t.len() {
        2 => match host.parse::<Ipv4Addr>() {
            Ok(ip) => Some(SocketAddrV4::new(ip, port).into()),
            Err(_) => host.parse::<Ipv6Addr>().ok().map(|ip| SocketAddrV6::new(ip, port, 0, 0).into()),
        },
        3 | 4 => {
            let flowinfo: u32 = t.get_item(2).ok()?.extract().ok()?;
            let scope_id: u32 = if t.len() == 4 { t.get_item(3).ok()?.extract().ok()? } else { 0 };
            Some(SocketAddrV6::new(host.parse().ok()?, port, flowinfo, scope_id).into())
        }
        _ => None,
    }
}

/// What one send did.
enum Sent {
    Done,
    WouldBlock,
    Failed(PyErr),
}

impl DatagramTransportCore {
    /// Nothing more to do once the connection is lost.
    fn connection_lost_done(&self, _py: Python<'_>) -> PyResult<()> {
        Ok(())
    }

    /// One send of `data` to `target`.
    fn send(&self, py: Python<'_>, data: &[u8], data_obj: &Bound<'_, PyAny>, target: &Target) -> Sent {
        let fd = self.core.fd();
        let result = match target {
            Target::Connected if fd >= 0 => socket_io::send(fd, data),
            Target::Address(to) if fd >= 0 => socket_io::send_to(fd, data, to),
            // Through the socket object: its resolver, or its error once closed.
            _ => {
                let sock = self.core.sock(py).unwrap_or_else(|| py.None().into_bound(py));
                let sent = match target {
                    Target::Connected => sock.call_method1(pyo3::intern!(py, "send"), (data_obj,)),
                    Target::Address(_) => sock.call_method1(pyo3::intern!(py, "sendto"), (data_obj, py.None())),
                    Target::Python(addr) => sock.call_method1(pyo3::intern!(py, "sendto"), (data_obj, addr)),
                };
                return match sent {
                    Ok(_) => Sent::Done,
                    Err(e) if socket_io::is_retry(py, &e) => Sent::WouldBlock,
                    Err(e) => Sent::Failed(e),
                };
            }
        };
        match result {
            Ok(_) => Sent::Done,
            Err(e) if would_block(&e) => Sent::WouldBlock,
            Err(e) => Sent::Failed(os_error(e)),
        }
    }

    /// Where `sendto(data, addr)` sends, parsed once per address object.
    fn target(&self, addr: &Bound<'_, PyAny>) -> Target {
        let mut s = self.core.state();
        if s.extra.connected {
            return Target::Connected;
        }
        if !s.extra.inet {
            return Target::Python(addr.clone().unbind());
        }
        if let Some((obj, to)) = &s.extra.last_to {
            if obj.is(addr) {
                return Target::Address(to.clone());
            }
        }
        match parse_address(addr) {
            Some(to) => {
                let previous = s.extra.last_to.replace((addr.clone().unbind(), to.clone()));
                drop(s);
                drop(previous);
                Target::Address(to)
            }
            None => Target::Python(addr.clone().unbind()),
        }
    }

    /// `OSError` goes to `protocol.error_received`, anything else is fatal.
    fn send_failed(&self, py: Python<'_>, e: PyErr) -> PyResult<()> {
        if e.is_instance_of::<PyOSError>(py) {
            match self.core.protocol(py) {
                Some(p) => p.call_method1(pyo3::intern!(py, "error_received"), (e.into_value(py),)).map(drop),
                None => Ok(()),
            }
        } else {
            self.core.fatal_error(py, e, "Fatal write error on datagram transport")
        }
    }

    /// One datagram received: `(data, address)`, None if none was waiting.
    fn receive<'py>(&self, py: Python<'py>) -> PyResult<Option<(Bound<'py, PyAny>, Py<PyAny>)>> {
        if !self.core.state().extra.inet {
            let Some(sock) = self.core.sock(py) else { return Ok(None) };
            return match sock.call_method1(pyo3::intern!(py, "recvfrom"), (MAX_DATAGRAM,)) {
                Ok(pair) => {
                    let (data, addr): (Bound<'py, PyAny>, Py<PyAny>) = pair.extract()?;
                    Ok(Some((data, addr)))
                }
                Err(e) if socket_io::is_retry(py, &e) => Ok(None),
                Err(e) => Err(e),
            };
        }
        let received = socket_io::with_read_buffer(MAX_DATAGRAM, |buf| {
            // SAFETY: u8 and MaybeUninit<u8> have the same layout, and
            // recvfrom only ever writes initialised bytes into the slice.
            let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
            socket_io::recv_from(self.core.fd(), uninit).map(|(n, from)| (PyBytes::new(py, &buf[..n]), from))
        });
        let (data, from) = match received {
            Ok(r) => r,
            Err(e) if would_block(&e) => return Ok(None),
            Err(e) => return Err(os_error(e)),
        };
        let cached = {
            let s = self.core.state();
            s.extra.last_from.as_ref().filter(|(a, _)| *a == from).map(|(_, obj)| obj.clone_ref(py))
        };
        let addr = match cached {
            Some(obj) => obj,
            None => {
                let obj = python_address(py, &from)?;
                let previous = self.core.state().extra.last_from.replace((from, obj.clone_ref(py)));
                drop(previous);
                obj
            }
        };
        Ok(Some((data.into_any(), addr)))
    }
}

/// The fd callbacks, called by the loop as Rust functions (`native_callbacks`).
pub(crate) fn read_ready(core: &Bound<'_, PyAny>) -> PyResult<()> {
    core.cast::<DatagramTransportCore>()?.get()._read_ready(core.py())
}

pub(crate) fn write_ready(core: &Bound<'_, PyAny>) -> PyResult<()> {
    core.cast::<DatagramTransportCore>()?.get()._write_ready(core.py())
}

super::base::transport_pymethods! {
    DatagramTransportCore,

    #[new]
    #[pyo3(signature = (loop_, sock, transport, protocol, address, connected, header_bytes, send_empty))]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(loop_: Bound<'_, PyAny>, sock: Bound<'_, PyAny>, transport: Bound<'_, PyAny>, protocol: Bound<'_, PyAny>, address: Option<Py<PyAny>>, connected: bool, header_bytes: usize, send_empty: bool) -> PyResult<Self> {
        let family: i32 = sock.getattr("family")?.extract()?;
        let extra = DatagramState {
            address,
            connected,
            inet: family == libc::AF_INET || family == libc::AF_INET6,
            header_bytes,
            send_empty,
            last_from: None,
            last_to: None,
        };
        let this = DatagramTransportCore { core: Core::new(&loop_, &sock, &transport, extra)? };
        this.store_protocol(&protocol)?;
        Ok(this)
    }

    /// The fd is readable: one datagram to the protocol, or its error.
    fn _read_ready(&self, py: Python<'_>) -> PyResult<()> {
        if self.core.state().conn_lost > 0 {
            return Ok(());
        }
        match self.receive(py) {
            // Looked up at each datagram, as asyncio does.
            Ok(Some((data, addr))) => match self.core.protocol(py) {
                Some(p) => p.call_method1(pyo3::intern!(py, "datagram_received"), (data, addr)).map(drop),
                None => Ok(()),
            },
            Ok(None) => Ok(()),
            Err(e) if e.is_instance_of::<PyOSError>(py) => match self.core.protocol(py) {
                Some(p) => p.call_method1(pyo3::intern!(py, "error_received"), (e.into_value(py),)).map(drop),
                None => Ok(()),
            },
            Err(e) if must_propagate(py, &e) => Err(e),
            Err(e) => self.core.fatal_error(py, e, "Fatal read error on datagram transport"),
        }
    }

    #[pyo3(signature = (data, addr=None))]
    pub(crate) fn sendto(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>, addr: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let core = &this.core;
        // What is queued must not change under us: bytes as is, else a copy.
        let data: Bound<'_, PyBytes> = match data.cast::<PyBytes>() {
            Ok(b) => b.clone(),
            Err(_) if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() => {
                py.get_type::<PyBytes>().call1((data,))?.cast_into::<PyBytes>()?
            }
            Err(_) => return Err(not_bytes_like(data)),
        };
        let (address, send_empty, header_bytes) = {
            let s = core.state();
            (s.extra.address.as_ref().map(|a| a.clone_ref(py)), s.extra.send_empty, s.extra.header_bytes)
        };
        let len = data.as_bytes().len();
        if len == 0 && !send_empty {
            return Ok(());
        }
        let mut addr = addr.unwrap_or_else(|| py.None().into_bound(py));
        if let Some(address) = address.filter(|a| a.bind(py).is_truthy().unwrap_or(true)) {
            let address = address.into_bound(py);
            if !addr.is_none() && !addr.eq(&address)? {
                return Err(PyValueError::new_err(format!("Invalid address: must be None or {}", address.str()?)));
            }
            addr = address;
            if core.state().conn_lost > 0 {
                core.writable_or_log(py)?;
                return Ok(());
            }
        }
        let target = this.target(&addr);
        if core.state().buffer.items.is_empty() {
            match this.send(py, data.as_bytes(), data.as_any(), &target) {
                Sent::Done => return Ok(()),
                Sent::WouldBlock => core.watch(slf.as_any(), true)?,
                Sent::Failed(e) if must_propagate(py, &e) => return Err(e),
                Sent::Failed(e) => return this.send_failed(py, e),
            }
        }
        {
            let mut s = core.state();
            let counted = len + header_bytes;
            s.buffer.size += counted;
            s.buffer.items.push_back(Datagram { data: data.unbind(), target, counted });
        }
        core.maybe_pause_protocol(py)
    }

    /// The fd is writable: send queued datagrams until one would block.
    fn _write_ready(&self, py: Python<'_>) -> PyResult<()> {
        let core = &self.core;
        loop {
            let Some(datagram) = core.state().buffer.items.pop_front() else { break };
            let data = datagram.data.bind(py).clone();
            match self.send(py, data.as_bytes(), data.as_any(), &datagram.target) {
                Sent::Done => core.state().buffer.size -= datagram.counted,
                Sent::WouldBlock => {
                    core.state().buffer.items.push_front(datagram);
                    break;
                }
                Sent::Failed(e) => {
                    core.state().buffer.size -= datagram.counted;
                    if must_propagate(py, &e) {
                        return Err(e);
                    }
                    return self.send_failed(py, e);
                }
            }
        }
        core.maybe_resume_protocol(py)?;
        let (empty, closing) = {
            let s = core.state();
            (s.buffer.items.is_empty(), s.closing)
        };
        if empty {
            core.unwatch(py, true)?;
            if closing {
                core.connection_lost_now(py)?;
            }
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.core.traverse(&visit, |x| {
            visit.call(&x.address)?;
            if let Some((_, obj)) = &x.last_from {
                visit.call(obj)?;
            }
            if let Some((obj, _)) = &x.last_to {
                visit.call(obj)?;
            }
            Ok(())
        })
    }

    fn __clear__(&self) {
        self.core.clear(|x| Box::new((x.address.take(), x.last_from.take(), x.last_to.take())));
    }
}
