"""TLS on ferroloop's transports: asyncio's own `SSLProtocol`, whose
once-per-record methods and handshake and shutdown steps run in Rust
(`SSLProtocolCore`, src/tls/).

The subclass keeps everything else of asyncio's class (`__init__`,
timeouts, extra info, error reports, debug mode, the app transport), so
its behaviour and messages are those of the interpreter in use.  Python 3.10's
asyncio has the older SSL pipe design; there its class is used as it is."""

import sys
from asyncio import base_events, sslproto, unix_events

from ._ferroloop import SSLProtocolCore
from ._stream import make_socket_transport

ssl = sslproto.ssl  # None if the interpreter has no ssl module

if sys.version_info >= (3, 11):
    _RECEIVE_BUFFER_SIZE = sslproto.SSLProtocol.max_size

    class SSLTransport(sslproto._SSLProtocolTransport):
        """asyncio's app transport of a TLS connection, whose `write` is
        the protocol's Rust `_app_write` (bound on the object: no Python
        frame between the app and Rust)."""

        def __init__(self, loop, ssl_protocol):
            super().__init__(loop, ssl_protocol)
            self.write = ssl_protocol._app_write

        def close(self):
            super().close()
            if self._ssl_protocol is None:
                # asyncio's write() now fails as it does on asyncio.
                self.__dict__.pop('write', None)

    class SSLProtocol(SSLProtocolCore, sslproto.SSLProtocol):
        """asyncio's SSLProtocol, with its per-record methods and their
        state in Rust (the base class, first in the method order)."""

        # asyncio's __init__ makes a max_size receive buffer (256 KiB, zeroed)
        # for every connection. ferroloop's transports feed the core from
        # their own buffer, so here it starts empty and get_buffer makes it
        # only if some other transport asks for it.
        max_size = 0

        def get_buffer(self, n):
            want = n if 0 < n <= _RECEIVE_BUFFER_SIZE else _RECEIVE_BUFFER_SIZE
            if len(self._ssl_buffer) < want:
                self._ssl_buffer = bytearray(want)
                self._ssl_buffer_view = memoryview(self._ssl_buffer)
            return self._ssl_buffer_view

        def _get_app_transport(self):
            # asyncio's, with the transport class above.
            if self._app_transport is None:
                if self._app_transport_created:
                    raise RuntimeError('Creating _SSLProtocolTransport twice')
                self._app_transport = SSLTransport(self._loop, self)
                self._app_transport_created = True
            return self._app_transport

    async def start_tls(self, transport, protocol, sslcontext, *,
                        server_side=False, server_hostname=None,
                        ssl_handshake_timeout=None, ssl_shutdown_timeout=None):
        """Upgrade `transport` to TLS; return the transport `protocol` uses
        from now on.  asyncio's steps, with ferroloop's SSLProtocol."""
        if ssl is None:
            raise RuntimeError('Python ssl module is not available')
        if not isinstance(sslcontext, ssl.SSLContext):
            raise TypeError(f'sslcontext is expected to be an instance of ssl.SSLContext, '
                            f'got {sslcontext!r}')
        if not getattr(transport, '_start_tls_compatible', False):
            raise TypeError(f'transport {transport!r} is not supported by start_tls()')

        waiter = self.create_future()
        ssl_protocol = SSLProtocol(self, protocol, sslcontext, waiter, server_side, server_hostname,
                                   ssl_handshake_timeout=ssl_handshake_timeout,
                                   ssl_shutdown_timeout=ssl_shutdown_timeout,
                                   call_connection_made=False)
        # Paused until connection_made has run, so no data arrives before it.
        transport.pause_reading()
        transport.set_protocol(ssl_protocol)
        conmade_cb = self.call_soon(ssl_protocol.connection_made, transport)
        resume_cb = self.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            conmade_cb.cancel()
            resume_cb.cancel()
            raise
        return ssl_protocol._app_transport

    start_tls.__doc__ = base_events.BaseEventLoop.start_tls.__doc__
else:
    SSLProtocol = sslproto.SSLProtocol
    start_tls = unix_events._UnixSelectorEventLoop.start_tls


def make_ssl_transport(self, rawsock, protocol, sslcontext, waiter=None, *,
                       server_side=False, server_hostname=None, extra=None, server=None,
                       **timeouts):
    """The TLS transport of a new connection: SSLProtocol over a socket transport."""
    ssl_protocol = SSLProtocol(self, protocol, sslcontext, waiter,
                               server_side, server_hostname, **timeouts)
    make_socket_transport(self, rawsock, ssl_protocol, extra=extra, server=server)
    return ssl_protocol._app_transport
