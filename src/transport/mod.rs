//! Transports whose hot paths run in Rust.
//!
//! - [`base`]: what every transport shares: close/abort, reading on and off, flow control,
//! - [`opening`]: what the socket transports' `__init__` do: extra info, core, registration, first callbacks,
//! - [`slots`]: the attributes a socket transport's Python object gets on every connection, in slots,
//! - [`unclosed`]: their Python class's `__del__` (the warning for a transport freed unclosed), in Rust,
//! - [`server_link`]: a server-side transport's place in its `Server`'s count of connections,
//! - [`weak_parts`]: the insides of the weakref containers a connection joins (the loop's transport registry, a server's clients),
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

use crate::native_callbacks::NativeFn;

/// The cores' methods the loop calls as Rust functions: the fd callbacks,
/// and the first and last callback of each connection (the last one bound
/// to the transport object, as asyncio schedules it).
pub fn native_callbacks(py: Python<'_>) -> PyResult<Vec<(usize, NativeFn)>> {
    use crate::native_callbacks::def_of;
    use NativeFn::{NoArgs, OneArg};
    let stream = py.get_type::<stream::StreamTransportCore>();
    let datagram = py.get_type::<datagram::DatagramTransportCore>();
    let read_pipe = py.get_type::<pipe::read::ReadPipeCore>();
    let write_pipe = py.get_type::<pipe::write::WritePipeCore>();
    Ok(vec![
        (def_of(&stream, "_read_ready")?, NoArgs(stream::read_ready)),
        (def_of(&stream, "_write_ready")?, NoArgs(stream::write_ready)),
        (def_of(&stream, "_start_reading")?, NoArgs(stream::StreamTransportCore::native_start_reading)),
        (def_of(&stream, "_call_connection_lost")?, OneArg(stream::StreamTransportCore::native_call_connection_lost)),
        (def_of(&datagram, "_read_ready")?, NoArgs(datagram::read_ready)),
        (def_of(&datagram, "_write_ready")?, NoArgs(datagram::write_ready)),
        (def_of(&datagram, "_start_reading")?, NoArgs(datagram::DatagramTransportCore::native_start_reading)),
        (def_of(&datagram, "_call_connection_lost")?, OneArg(datagram::DatagramTransportCore::native_call_connection_lost)),
        (def_of(&read_pipe, "_read_ready")?, NoArgs(pipe::read::read_ready)),
        (def_of(&write_pipe, "_write_ready")?, NoArgs(pipe::write::write_ready)),
        (def_of(&write_pipe, "_read_ready")?, NoArgs(pipe::write::read_ready)),
        core_methods::native_call_connection_lost(),
    ])
}
