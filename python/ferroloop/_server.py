"""The accept path of servers (`create_server`, `create_unix_server`):
asyncio's `_accept_connection`, with the queued connections taken by Rust
(src/accept.rs) in one call. Each connection then gets asyncio's own
`_accept_connection2` task, as on the standard loop: the protocol factory
runs in that task, one iteration after the accept. Debug mode, whose
accept logs each connection, runs asyncio's method itself."""

from ._ferroloop import accept_connections
from ._sock import STANDARD  # the standard loop: the reference, and the fallback


def accept_connection(self, protocol_factory, sock, sslcontext=None, server=None,
                      backlog=100, *timeouts):
    # (*timeouts: the ssl handshake timeout, and from 3.11 the shutdown timeout.)
    if self._debug:
        return STANDARD._accept_connection(self, protocol_factory, sock, sslcontext, server,
                                           backlog, *timeouts)
    accepted, then = accept_connections(sock, backlog)
    for conn, addr in accepted:
        self.create_task(self._accept_connection2(
            protocol_factory, conn, {'peername': addr}, sslcontext, server, *timeouts))
    if then is True:
        STANDARD._accept_connection(self, protocol_factory, sock, sslcontext, server,
                                    backlog - len(accepted), *timeouts)
    elif then is not None:
        raise then
