//! Transports whose hot paths run in Rust.
//!
//! - [`base`]: what every transport shares: close/abort, reading on and off, flow control,
//! - [`opening`]: what the socket transports' `__init__` do: extra info, core, registration, first callbacks,
//! - [`slots`]: the attributes a socket transport's Python object gets on every connection, in slots,
//! - [`unclosed`]: their Python class's `__del__` (the warning for a transport freed unclosed), in Rust,
//! - [`server_link`]: a server-side transport's place in its `Server`'s count of connections,
//! - [`weak_parts`]: the insides of the weakref containers those two steps update,
//! - [`core_methods`]: the transport objects' methods that are their core's, as method descriptors,
//! - [`stream`]: TCP and Unix stream sockets (one implementation for both),
//! - [`stream_reader`]: asyncio's `StreamReaderProtocol` fed without its Python frames,
//! - [`datagram`]: UDP and Unix datagram sockets,
//! - [`pipe`]: pipes, FIFOs and character devices (`connect_read_pipe`, `connect_write_pipe`, subprocess stdio),
//! - [`write_buffer`]: the queue of unsent bytes, sent with vectored sends,
//! - [`socket_io`]: the system calls (sockets, and raw fds for pipes), errors as Python raises them,
//! - [`native_callbacks`]: the cores' methods the loop calls as Rust functions.

pub mod base;
pub mod core_methods;
pub mod datagram;
pub mod opening;
pub mod server_link;
pub mod slots;
pub mod unclosed;
pub mod weak_parts;
pub mod pipe;
pub mod socket_io;
pub mod stream;
pub mod stream_reader;
pub mod write_buffer;

use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::native_callbacks::NativeFn;

/// The cores' methods the loop calls as Rust functions: the fd callbacks,
/// and the first and last callback of each connection.
pub fn native_callbacks(py: Python<'_>) -> Vec<(Bound<'_, PyType>, &'static str, NativeFn)> {
    use NativeFn::{NoArgs, OneArg};
    let stream = py.get_type::<stream::StreamTransportCore>();
    let datagram = py.get_type::<datagram::DatagramTransportCore>();
    vec![
        (stream.clone(), "_read_ready", NoArgs(stream::read_ready)),
        (stream.clone(), "_write_ready", NoArgs(stream::write_ready)),
        (stream.clone(), "_start_reading", NoArgs(stream::StreamTransportCore::native_start_reading)),
        (stream, "_call_connection_lost", OneArg(stream::StreamTransportCore::native_call_connection_lost)),
        (datagram.clone(), "_read_ready", NoArgs(datagram::read_ready)),
        (datagram.clone(), "_write_ready", NoArgs(datagram::write_ready)),
        (datagram.clone(), "_start_reading", NoArgs(datagram::DatagramTransportCore::native_start_reading)),
        (datagram, "_call_connection_lost", OneArg(datagram::DatagramTransportCore::native_call_connection_lost)),
        (py.get_type::<pipe::read::ReadPipeCore>(), "_read_ready", NoArgs(pipe::read::read_ready)),
        (py.get_type::<pipe::write::WritePipeCore>(), "_write_ready", NoArgs(pipe::write::write_ready)),
        (py.get_type::<pipe::write::WritePipeCore>(), "_read_ready", NoArgs(pipe::write::read_ready)),
    ]
}
