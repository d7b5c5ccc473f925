"""The stream transport of TCP and Unix sockets.

`SocketTransport` is what protocols see: an `asyncio.Transport` whose
state and hot paths (read, write, flow control, close) are the Rust
`StreamTransportCore`. Those methods are bound onto each instance, so
`transport.write(data)` calls Rust with no Python frame in between. What
stays here is cold: extra info, repr, the end of the connection and error
reports, written as asyncio's `_SelectorSocketTransport` writes them."""

import inspect
import sys
import warnings
from asyncio import base_events, constants, futures, sslproto, transports, trsock
from asyncio.log import logger

from ._ferroloop import StreamTransportCore

# Methods of the transport API that the Rust core implements.
_CORE_METHODS = (
    "write", "write_eof", "can_write_eof",
    "close", "abort", "is_closing", "is_reading", "pause_reading", "resume_reading",
    "get_write_buffer_size",
    "get_protocol", "set_protocol",
    "_force_close", "_make_empty_waiter", "_reset_empty_waiter",
    "_read_ready", "_write_ready",
)
# Before 3.12, writelines() is WriteTransport's: join, then write().
if sys.version_info >= (3, 12):
    _CORE_METHODS += ("writelines",)

# 3.13's Server tracks its clients: _attach(transport)/_detach(transport).
_SERVER_TRACKS_CLIENTS = "transport" in inspect.signature(base_events.Server._attach).parameters


def _delegate(name):
    def method(self, *args, **kwargs):
        return getattr(self._core, name)(*args, **kwargs)
    method.__name__ = method.__qualname__ = name
    method.__doc__ = getattr(getattr(transports.Transport, name, None), "__doc__", None)
    return method


class SocketTransport(transports._FlowControlMixin, transports.Transport):
    """A connected TCP or Unix stream socket."""

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    max_size = 256 * 1024

    # Read by __del__, also when __init__ failed early.
    _sock = None
    _server = None

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        # Not _FlowControlMixin.__init__: the flow-control state is the core's.
        transports.BaseTransport.__init__(self, extra)
        self._extra['socket'] = trsock.TransportSocket(sock)
        try:
            self._extra['sockname'] = sock.getsockname()
        except OSError:
            self._extra['sockname'] = None
        if 'peername' not in self._extra:
            try:
                self._extra['peername'] = sock.getpeername()
            except OSError:
                self._extra['peername'] = None
        self._loop = loop
        self._sock_fd = sock.fileno()
        core = self._core = StreamTransportCore(loop, sock, self, protocol)
        for name in _CORE_METHODS:
            self.__dict__[name] = getattr(core, name)
        self._set_write_buffer_limits()
        self._sock = sock
        self._server = server
        if server is not None:
            server._attach(self) if _SERVER_TRACKS_CLIENTS else server._attach()
        loop._transports[self._sock_fd] = self

        # As asyncio: no Nagle delay; connection_made first, then reading,
        # then the waiter.
        base_events._set_nodelay(sock)
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(core._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    # The state asyncio's code and tests read off a selector transport.
    _protocol = property(lambda self: self._core.get_protocol())
    _protocol_paused = property(lambda self: self._core._protocol_paused)
    _closing = property(lambda self: self._core.is_closing())
    _conn_lost = property(lambda self: self._core._conn_lost)
    _eof = property(lambda self: self._core._eof)
    _paused = property(lambda self: self._core._paused)
    _empty_waiter = property(lambda self: self._core._empty_waiter)

    def set_write_buffer_limits(self, high=None, low=None):
        # asyncio's arithmetic and checks (_FlowControlMixin); the core
        # compares the buffer against the result.
        self._set_write_buffer_limits(high=high, low=low)
        self._core._set_water_marks(self._high_water, self._low_water)

    def __repr__(self):
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append('closed')
        elif self._core.is_closing():
            info.append('closing')
        info.append(f'fd={self._sock_fd}')
        loop = self._loop
        if loop is not None and not loop.is_closed():
            reader, writer = loop._fd_handles(self._sock_fd)
            info.append('read=polling' if reader is not None else 'read=idle')
            state = 'polling' if writer is not None else 'idle'
            info.append(f'write=<{state}, bufsize={self._core.get_write_buffer_size()}>')
        return '<{}>'.format(' '.join(info))

    def __del__(self, _warn=warnings.warn):
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()
            self._detach_server()

    def _detach_server(self):
        server = self._server
        if server is not None:
            self._server = None
            server._detach(self) if _SERVER_TRACKS_CLIENTS else server._detach()

    def _fatal_error(self, exc, message='Fatal error on transport'):
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler({
                'message': message,
                'exception': exc,
                'transport': self,
                'protocol': self._protocol,
            })
        self._core._force_close(exc)

    def _flow_control_failed(self, message, exc):
        self._loop.call_exception_handler({
            'message': message,
            'exception': exc,
            'transport': self,
            'protocol': self._protocol,
        })

    def _debug_log(self, message):
        logger.debug(message, self)

    def _call_connection_lost(self, exc):
        core = self._core
        try:
            if core._protocol_connected:
                core.get_protocol().connection_lost(exc)
        finally:
            self._sock.close()
            self._sock = None
            self._loop = None
            waiter = core._empty_waiter
            core._release()
            self._detach_server()
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionError("Connection is closed by peer"))


for _name in _CORE_METHODS:
    setattr(SocketTransport, _name, _delegate(_name))
del _name


def make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
    return SocketTransport(self, sock, protocol, waiter, extra, server)


def make_ssl_transport(self, rawsock, protocol, sslcontext, waiter=None, *,
                       server_side=False, server_hostname=None, extra=None, server=None,
                       **timeouts):
    """TLS: asyncio's SSLProtocol over our socket transport."""
    ssl_protocol = sslproto.SSLProtocol(self, protocol, sslcontext, waiter,
                                        server_side, server_hostname, **timeouts)
    SocketTransport(self, rawsock, ssl_protocol, extra=extra, server=server)
    return ssl_protocol._app_transport
