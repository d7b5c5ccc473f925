"""`loop.sock_recv`, `sock_recv_into` and `sock_sendall`: coroutines over
the Rust fast paths (src/sock_ops.rs), which hand back the result when the
socket was ready, or a future the loop completes. Whatever the fast path
does not take (socket subclasses such as SSLSocket, debug mode, odd
arguments) runs the standard loop's own coroutine, `STANDARD`'s."""

from asyncio import unix_events

from . import _ferroloop

# The class whose sock_* coroutines are the reference, and the fallback.
STANDARD = unix_events._UnixSelectorEventLoop


async def sock_recv(self, sock, n):
    result = _ferroloop.sock_recv(self, sock, n)
    return result if result.__class__ is bytes else await result


async def sock_recv_into(self, sock, buf):
    result = _ferroloop.sock_recv_into(self, sock, buf)
    return result if result.__class__ is int else await result


async def sock_sendall(self, sock, data):
    result = _ferroloop.sock_sendall(self, sock, data)
    if result is not None:
        return await result


for _f in (sock_recv, sock_recv_into, sock_sendall):
    _f.__doc__ = getattr(STANDARD, _f.__name__).__doc__
del _f
