"""The datagram transport (UDP and Unix datagram sockets):
`DatagramTransport`, over the Rust `DatagramTransportCore`
(src/transport/datagram.rs); what all socket transports share is
`RustTransport` (_transport.py)."""

import sys
from asyncio import selector_events, transports

from ._ferroloop import open_datagram_transport
from ._transport import CORE_METHODS, RustTransport, overrides_socket_io

# The socket methods asyncio's datagram transport does its I/O with.
_SOCKET_IO = ("recvfrom", "send", "sendto")

# As asyncio's, version for version: a DatagramTransport from 3.12; reading
# can be paused from 3.11; 3.13 sends empty datagrams and counts 8 header
# bytes per queued datagram against the water marks.
_BASES = (RustTransport,) + ((transports.DatagramTransport,) if sys.version_info >= (3, 12) else ())
_PAUSABLE = ("is_reading", "pause_reading", "resume_reading") if sys.version_info >= (3, 11) else ()
_PY313 = sys.version_info >= (3, 13)


class DatagramTransport(*_BASES):
    """A UDP or Unix datagram socket."""

    _CORE_METHODS = CORE_METHODS + ("sendto",) + _PAUSABLE
    max_size = 256 * 1024

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        # asyncio's steps, in Rust (src/transport/opening.rs).
        open_datagram_transport(self, loop, sock, protocol, address, waiter, extra,
                                8 if _PY313 else 0, _PY313)


def make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
    if overrides_socket_io(sock, _SOCKET_IO):
        return selector_events._SelectorDatagramTransport(self, sock, protocol, address, waiter, extra)
    return DatagramTransport(self, sock, protocol, address, waiter, extra)
