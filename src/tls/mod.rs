//! TLS through the interpreter's own `ssl` module (`ssl.MemoryBIO` and the
//! user's `SSLContext`), over any of ferroloop's stream transports.
//!
//! The protocol object is asyncio's own `SSLProtocol` (3.11+) with a Rust
//! base class first in its order (`ferroloop._sslproto`). What runs once
//! per record, the handshake and shutdown steps, and the state they need
//! are Rust's; the rest (`__init__`, timeouts, extra info, error reports,
//! debug mode, rare paths) stays asyncio's code:
//!
//! - [`protocol`]: `SSLProtocolCore`, its state and the methods asyncio's
//!   code calls; received bytes into the SSL object,
//! - [`read`]: plaintext out to the app protocol, the transport's reading
//!   paused while too much waits to be decrypted,
//! - [`write`](mod@write): app writes (the app transport's `write`) encrypted and
//!   handed to the transport, the app's writing paused while too much waits,
//! - [`handshake`]: the handshake steps and the state transitions,
//! - [`shutdown`]: the end of the connection (EOF, close_notify),
//! - [`flow`]: the water-mark decisions (plain Rust),
//! - [`c_calls`]: the `_ssl` object's and memory BIOs' C methods, called
//!   without a lookup by name,
//! - [`lent_bytes`]: received bytes lent to `MemoryBIO.write` without a copy.

mod c_calls;
pub mod flow;
mod handshake;
mod lent_bytes;
pub mod protocol;
mod read;
mod shutdown;
mod write;
