"""`loop.getaddrinfo` with a fast path: a host that is already a numeric
address (and a numeric port) needs no resolver, so it is answered on the
spot instead of through the default executor."""

import socket
from asyncio import base_events

_stdlib_getaddrinfo = base_events.BaseEventLoop.getaddrinfo


def _is_numeric(host, port):
    if port is not None and not isinstance(port, int):
        if not isinstance(port, (str, bytes)) or not port.isdigit():
            return False
    if host is None:
        return True
    if isinstance(host, bytes):
        try:
            host = host.decode("idna")
        except UnicodeError:
            return False
    if not isinstance(host, str):
        return False
    address = host.partition("%")[0]
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, address)
            return True
        except (OSError, ValueError):
            pass
    return False


async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
    if self._debug or not _is_numeric(host, port):
        return await _stdlib_getaddrinfo(self, host, port, family=family, type=type, proto=proto, flags=flags)
    return socket.getaddrinfo(host, port, family, type, proto, flags)
