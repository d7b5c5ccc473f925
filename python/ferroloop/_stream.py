"""The stream transport of TCP and Unix sockets: `SocketTransport`, over
the Rust `StreamTransportCore` (src/transport/stream.rs); what all socket
transports share is `RustTransport` (_transport.py)."""

import sys
from asyncio import constants, selector_events

from ._ferroloop import open_stream_transport
from ._transport import CORE_METHODS, RustTransport, overrides_socket_io

# The socket methods asyncio's stream transport does its I/O with.
_SOCKET_IO = ("recv", "recv_into", "send", "sendmsg", "shutdown")


class SocketTransport(RustTransport):
    """A connected TCP or Unix stream socket."""

    _CORE_METHODS = CORE_METHODS + (
        "write", "write_eof", "can_write_eof", "is_reading", "pause_reading", "resume_reading",
        "_make_empty_waiter", "_reset_empty_waiter",
        # Before 3.12, writelines() is WriteTransport's: join, then write().
    ) + (("writelines",) if sys.version_info >= (3, 12) else ())
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    max_size = 256 * 1024

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        # asyncio's steps, in Rust (src/transport/opening.rs): the extra info,
        # the core (which sets TCP_NODELAY, as asyncio's transport does), the
        # server's count, then connection_made, reading and the waiter.
        open_stream_transport(self, loop, sock, protocol, waiter, extra, server)

    _eof = property(lambda self: self._core._eof)
    _empty_waiter = property(lambda self: self._core._empty_waiter)


def make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
    if overrides_socket_io(sock, _SOCKET_IO):
        return selector_events._SelectorSocketTransport(self, sock, protocol, waiter, extra, server)
    return SocketTransport(self, sock, protocol, waiter, extra, server)
