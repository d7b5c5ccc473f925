"""The stream transport of TCP and Unix sockets: `SocketTransport`, over
the Rust `StreamTransportCore` (src/transport/stream.rs); what all socket
transports share is `RustTransport` (_transport.py)."""

import inspect
import sys
from asyncio import base_events, constants, futures, selector_events

from ._ferroloop import StreamTransportCore
from ._transport import CORE_METHODS, RustTransport, overrides_socket_io

# The socket methods asyncio's stream transport does its I/O with.
_SOCKET_IO = ("recv", "recv_into", "send", "sendmsg", "shutdown")

# 3.13's Server tracks its clients: _attach(transport)/_detach(transport).
_SERVER_TRACKS_CLIENTS = "transport" in inspect.signature(base_events.Server._attach).parameters


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
        super().__init__(loop, sock, extra)
        core = StreamTransportCore(loop, sock, self, protocol)
        self._bind_core(core, sock)
        self._server = server
        if server is not None:
            server._attach(self) if _SERVER_TRACKS_CLIENTS else server._attach()

        # As asyncio: connection_made first, then reading, then the waiter.
        # (The core has set TCP_NODELAY, as asyncio's transport does.)
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(core._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    _eof = property(lambda self: self._core._eof)
    _empty_waiter = property(lambda self: self._core._empty_waiter)

    def _detach_server(self):
        server = self._server
        if server is not None:
            self._server = None
            server._detach(self) if _SERVER_TRACKS_CLIENTS else server._detach()

    def _connection_lost_done(self, core):
        waiter = core._empty_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("Connection is closed by peer"))


def make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
    if overrides_socket_io(sock, _SOCKET_IO):
        return selector_events._SelectorSocketTransport(self, sock, protocol, waiter, extra, server)
    return SocketTransport(self, sock, protocol, waiter, extra, server)
