"""`loop.sock_recv`, `sock_recv_into` and `sock_sendall`: coroutines over
the Rust fast paths (src/sock_ops.rs), which hand back the result when the
socket was ready, or a future the loop completes; and the connect step of
`sock_connect` (which `create_connection` uses). Whatever the fast path
does not take (socket subclasses such as SSLSocket, debug mode, odd
arguments) runs the standard loop's own coroutine, `STANDARD`'s."""

import errno
import functools
import os
from asyncio import unix_events

from . import _ferroloop
from ._transport import PLAIN_SOCKET

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


# What sock.connect() raises as BlockingIOError or InterruptedError: the
# connection goes on in the background (EWOULDBLOCK is EAGAIN on Linux).
_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY, errno.EINTR})


def sock_connect_attempt(self, fut, sock, address):
    """asyncio's `_sock_connect` step for step, with `connect_ex()`: a
    connection in progress (the usual case) is an error number, not a
    BlockingIOError raised and caught. Other kinds of socket take asyncio's
    own method, which calls their connect()."""
    if type(sock) is not PLAIN_SOCKET:
        return STANDARD._sock_connect(self, fut, sock, address)
    fd = sock.fileno()
    try:
        err = sock.connect_ex(address)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        # A bad address, before any system call: connect() raises the same
        # error, but its message names connect(), not connect_ex().
        return STANDARD._sock_connect(self, fut, sock, address)
    if err == 0:
        fut.set_result(None)
    elif err in _IN_PROGRESS:
        self._ensure_fd_no_transport(fd)
        handle = self._add_writer(fd, self._sock_connect_cb, fut, sock, address)
        fut.add_done_callback(functools.partial(self._sock_write_done, fd, handle=handle))
    else:
        # What connect() raises: OSError(errno, strerror), as its subclass.
        fut.set_exception(OSError(err, os.strerror(err)))
