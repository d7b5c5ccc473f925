//! ferroloop's native core. The module is a table of contents:
//!
//! - [`clock`]: the monotonic clock `loop.time()` reads,
//! - [`timer_heap`]: timers in deadline order, ties as `heapq` breaks them,
//! - [`poller`]: mio polling plus level-triggered fd interest,
//! - [`inherited`]: the descriptor through which `Loop` reuses the standard loop's methods,
//! - [`handles`]: `Handle` and `TimerHandle`,
//! - [`native_callbacks`]: the transports' fd callbacks, run as Rust calls,
//! - [`event_loop`]: `LoopCore`, the Rust base of `ferroloop.Loop`,
//! - [`transport`]: socket and pipe transports (read, write, flow control),
//! - [`tls`]: the per-record paths of TLS (asyncio's SSLProtocol),
//! - [`accept`]: servers' accept batches, as `sock.accept()` makes connections,
//! - [`sockaddr`]: socket addresses as the socket module returns them,
//! - [`socket_object`]: accepted connections' `socket.socket` objects, made and closed,
//! - [`sock_ops`]: `sock_recv`/`sock_recv_into`/`sock_sendall` fast paths,
//! - [`pyhelpers`]: calls into the package's Python helpers.

pub mod accept;
pub mod clock;
pub mod event_loop;
pub mod handles;
pub mod inherited;
pub mod native_callbacks;
pub mod poller;
pub mod pyhelpers;
pub mod sock_ops;
pub mod sockaddr;
pub mod socket_object;
pub mod timer_heap;
pub mod tls;
pub mod transport;

use pyo3::prelude::*;

#[pymodule]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::LoopCore>()?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<inherited::Inherited>()?;
    m.add_class::<handles::TimerHandle>()?;
    m.add_class::<transport::stream::StreamTransportCore>()?;
    m.add_class::<transport::datagram::DatagramTransportCore>()?;
    m.add_class::<transport::pipe::read::ReadPipeCore>()?;
    m.add_class::<transport::pipe::write::WritePipeCore>()?;
    m.add_class::<tls::protocol::SSLProtocolCore>()?;
    m.add_class::<sock_ops::SockWait>()?;
    sock_ops::init(m.py())?;
    socket_object::init(m.py())?;
    transport::opening::init(m.py())?;
    transport::server_link::init(m.py())?;
    native_callbacks::init(transport::native_callbacks(m.py())?);
    m.add_function(wrap_pyfunction!(accept::accept_connections, m)?)?;
    m.add_function(wrap_pyfunction!(transport::opening::open_stream_transport, m)?)?;
    m.add_function(wrap_pyfunction!(transport::opening::open_datagram_transport, m)?)?;
    m.add_function(wrap_pyfunction!(transport::server_link::detach_server, m)?)?;
    m.add_function(wrap_pyfunction!(transport::unclosed::transport_finalizer, m)?)?;
    m.add_function(wrap_pyfunction!(transport::core_methods::core_method, m)?)?;
    m.add_function(wrap_pyfunction!(sock_ops::sock_recv, m)?)?;
    m.add_function(wrap_pyfunction!(sock_ops::sock_recv_into, m)?)?;
    m.add_function(wrap_pyfunction!(sock_ops::sock_sendall, m)?)?;
    Ok(())
}
