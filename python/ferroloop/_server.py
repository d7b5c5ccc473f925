"""The accept path of servers (`create_server`, `create_unix_server`):
asyncio's `_accept_connection`, with the queued connections taken by Rust
(src/accept.rs) in one call, and asyncio's `_accept_connection2` without
its task.

On the standard loop each connection gets a task whose first step (one
iteration after the accept) runs the protocol factory and makes the
transport, and which then waits for the transport's waiter only to close
the transport if it fails. Here that first step is a plain callback
(`open_accepted`, same iteration, same context) and the wait is a done
callback of the waiter, which runs in the iteration the task would have
resumed in; a plain TCP or Unix transport has no waiter (it cannot fail),
which saves the task, the future and an iteration per connection. For a
plain TCP or Unix server, the batch and that callback are Rust's
(accept.rs: the loop's `_accept_connection`, and `open_accepted`). With a
task factory set, the factory is shown the task, as on the standard loop;
debug mode, whose accept logs each connection, runs asyncio's method."""

import functools

from ._ferroloop import accept_connections
from ._sock import STANDARD  # the standard loop: the reference, and the fallback

# `_accept_connection2`'s keyword names for the timeouts passed on by
# `_accept_connection` (the shutdown timeout exists from 3.11).
_TIMEOUT_NAMES = ("ssl_handshake_timeout", "ssl_shutdown_timeout")


def accept_connection(self, protocol_factory, sock, sslcontext=None, server=None,
                      backlog=100, *timeouts):
    # (*timeouts: the ssl handshake timeout, and from 3.11 the shutdown timeout.)
    # The loop's own `_accept_connection` (src/accept.rs) runs this for
    # anything but a plain TCP or Unix server.
    if self._debug:
        return STANDARD._accept_connection(self, protocol_factory, sock, sslcontext, server,
                                           backlog, *timeouts)
    accepted, then = accept_connections(sock, backlog)
    if self._task_factory is None:
        for conn, addr in accepted:
            self.call_soon(open_accepted, self, protocol_factory, conn, {'peername': addr},
                           sslcontext, server, timeouts)
    else:
        for conn, addr in accepted:
            self.create_task(self._accept_connection2(
                protocol_factory, conn, {'peername': addr}, sslcontext, server, *timeouts))
    if then is True:
        STANDARD._accept_connection(self, protocol_factory, sock, sslcontext, server,
                                    backlog - len(accepted), *timeouts)
    elif then is not None:
        raise then


def open_accepted(loop, protocol_factory, conn, extra, sslcontext, server, timeouts):
    """The protocol and transport of an accepted connection: the task body
    of asyncio's `_accept_connection2`, with the same error handling."""
    protocol = transport = None
    try:
        protocol = protocol_factory()
        if sslcontext:
            waiter = loop.create_future()
            transport = loop._make_ssl_transport(
                conn, protocol, sslcontext, waiter=waiter, server_side=True, extra=extra,
                server=server, **dict(zip(_TIMEOUT_NAMES, timeouts)))
            waiter.add_done_callback(
                functools.partial(_close_unless_opened, loop, protocol, transport))
        else:
            loop._make_socket_transport(conn, protocol, extra=extra, server=server)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        _report_failure(loop, exc, protocol, transport)


def _close_unless_opened(loop, protocol, transport, waiter):
    # Where asyncio's task, awaiting the waiter, closes the transport.
    exc = waiter.exception() if not waiter.cancelled() else waiter._make_cancelled_error()
    if exc is not None:
        transport.close()
        _report_failure(loop, exc, protocol, transport)


def _report_failure(loop, exc, protocol, transport):
    # asyncio reports a failed incoming connection only in debug mode.
    if loop._debug:
        context = {'message': 'Error on transport creation for incoming connection',
                   'exception': exc}
        if protocol is not None:
            context['protocol'] = protocol
        if transport is not None:
            context['transport'] = transport
        loop.call_exception_handler(context)
