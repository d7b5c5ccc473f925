//! Pipe transports, as asyncio's `unix_events._UnixReadPipeTransport` and
//! `_UnixWritePipeTransport`, step for step.
//!
//! - [`read`]: `ReadPipeCore`: `read(2)` into the thread's read buffer, one
//!   `bytes` per read handed to `data_received`, EOF, pause/resume,
//! - [`write`](mod@write): `WritePipeCore`: `write` tries `write(2)` at once and queues
//!   only the rest, queued chunks go out in one `writev`; flow control, and a
//!   reader on the write end to notice the read end closing.
//!
//! Both are [`Core`]s like the socket transports (same state machine pieces:
//! watching the fd through the loop's own handles, flow control, fatal
//! errors); what differs is the close path, which asyncio writes differently
//! for pipes (no `_conn_lost` guard, `write_eof` is `close`). The Python
//! objects users see are `ferroloop._pipe.ReadPipeTransport` and
//! `WritePipeTransport`, which keep the cold parts (fd checks, repr,
//! `__del__`, `_fatal_error`, `_call_connection_lost`).

pub mod read;
pub mod write;

use pyo3::prelude::*;

use super::base::{Core, WriteQueue};

/// The read pipe's "write queue": always empty.
#[derive(Default)]
pub struct NoBuffer;

impl WriteQueue for NoBuffer {
    fn size(&self) -> usize {
        0
    }
}

/// `loop.call_soon(callback)`; nothing once the transport let go of its
/// loop (the connection is lost).
fn call_soon<B: WriteQueue, X>(core: &Core<B, X>, callback: Bound<'_, PyAny>) -> PyResult<()> {
    let py = callback.py();
    let Some(lp) = core.event_loop(py) else { return Ok(()) };
    lp.call_method1(pyo3::intern!(py, "call_soon"), (callback,)).map(drop)
}

/// `if loop.get_debug(): logger.info("%r was closed by peer", self)`, on
/// the Python side (called once per transport at most).
fn log_closed_by_peer<B: WriteQueue, X>(core: &Core<B, X>, py: Python<'_>) -> PyResult<()> {
    match core.transport(py) {
        Some(t) => t.call_method0(pyo3::intern!(py, "_log_closed_by_peer")).map(drop),
        None => Ok(()),
    }
}
