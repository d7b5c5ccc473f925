//! Transports whose hot paths run in Rust.
//!
//! - [`base`]: what every transport shares: close/abort, reading on and off, flow control,
//! - [`stream`]: TCP and Unix stream sockets (one implementation for both),
//! - [`datagram`]: UDP and Unix datagram sockets,
//! - [`write_buffer`]: the queue of unsent bytes, sent with vectored sends,
//! - [`socket_io`]: the socket system calls, errors as Python's socket module raises them.

pub mod base;
pub mod datagram;
pub mod socket_io;
pub mod stream;
pub mod write_buffer;
