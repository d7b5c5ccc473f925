"""What the socket transports' Python objects share.

Each transport is a Rust core (`src/transport/`) holding the state and
running the hot paths, plus a Python object that protocols see: an
`asyncio.Transport` that binds the core's methods as its own (so
`transport.write(data)` calls Rust with no Python frame in between) and
keeps the cold parts, written as asyncio's `_SelectorTransport` writes
them: repr, `__del__`, error reports. Its `__init__` and the end of the
connection (`_call_connection_lost`) are Rust's too: src/transport/opening.rs
and base.rs."""

import socket
import warnings
import weakref
from asyncio import transports
from asyncio.log import logger

from ._ferroloop import core_method, detach_server, transport_finalizer

# Methods every Rust core has (src/transport/base.rs); a subclass adds its own.
CORE_METHODS = (
    "close", "abort", "is_closing", "get_write_buffer_size",
    "get_protocol", "set_protocol", "_force_close", "_read_ready", "_write_ready",
    "_call_connection_lost",
)


_overriding_classes = weakref.WeakKeyDictionary()
# Taken now: tests replace socket.socket with a factory function meanwhile.
PLAIN_SOCKET = socket.socket


def overrides_socket_io(sock, names):
    """Whether `sock` is of a socket subclass that overrides any of the
    methods `names`. asyncio's transports do their I/O through those methods
    and the Rust cores through the fd, so such a socket gets asyncio's own
    transport, which calls the overrides."""
    cls = type(sock)
    if cls is PLAIN_SOCKET:
        return False
    per_class = _overriding_classes.setdefault(cls, {})
    if names not in per_class:
        per_class[names] = any(getattr(cls, n, None) is not getattr(PLAIN_SOCKET, n) for n in names)
    return per_class[names]


def _as_mark(value):
    """A water mark as the core's float: an int too large for a float is
    above any buffer size, as infinity is."""
    try:
        return float(value)
    except OverflowError:
        return float("inf")


class CoreMethods:
    """Takes the Rust core's methods named in `_CORE_METHODS` as the
    object's own: each is a method descriptor on the class
    (src/transport/core_methods.rs) whose function calls `self._core`'s
    method of that name, without a Python frame."""

    _CORE_METHODS = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in cls._CORE_METHODS:
            setattr(cls, name, core_method(cls, name))


class CoreFlowControl:
    """Write flow control whose state is the core's: asyncio's arithmetic
    and checks for the limits (_FlowControlMixin), the core's comparisons."""

    # asyncio's default limits (_FlowControlMixin._set_write_buffer_limits()),
    # until set_write_buffer_limits() sets the object's own.
    _high_water = 64 * 1024
    _low_water = _high_water // 4

    def set_write_buffer_limits(self, high=None, low=None):
        self._set_write_buffer_limits(high=high, low=low)
        self._core._set_water_marks(_as_mark(self._high_water), _as_mark(self._low_water))

    def _flow_control_failed(self, message, exc):
        self._loop.call_exception_handler({
            'message': message,
            'exception': exc,
            'transport': self,
            'protocol': self._protocol,
        })


class RustTransport(CoreMethods, CoreFlowControl, transports._FlowControlMixin, transports.Transport):
    """Base of the socket transports whose state is a Rust core (`self._core`)."""

    # Those of the core's methods that the transport takes as its own.
    _CORE_METHODS = CORE_METHODS

    # Set on every connection, by Rust through the slots' descriptors
    # (src/transport/slots.rs), as are asyncio's `_loop` and `_extra`
    # slots. (__init__ is a subclass's, in Rust: src/transport/opening.rs;
    # __repr__ and __del__ also meet objects whose __init__ failed early.)
    __slots__ = ("_sock", "_sock_fd", "_core", "_server")

    # The state asyncio's code and tests read off a selector transport.
    _protocol = property(lambda self: self._core.get_protocol())
    _protocol_paused = property(lambda self: self._core._protocol_paused)
    _closing = property(lambda self: self._core.is_closing())
    _conn_lost = property(lambda self: self._core._conn_lost)
    _paused = property(lambda self: self._core._paused)

    def __repr__(self):
        info = [self.__class__.__name__]
        if getattr(self, '_sock', None) is None:
            info.append('closed')
        elif self._core.is_closing():
            info.append('closing')
        info.append(f'fd={getattr(self, "_sock_fd", None)}')
        loop = getattr(self, '_loop', None)
        if loop is not None and not loop.is_closed():
            reader, writer = loop._fd_handles(self._sock_fd)
            info.append('read=polling' if reader is not None else 'read=idle')
            state = 'polling' if writer is not None else 'idle'
            info.append(f'write=<{state}, bufsize={self._core.get_write_buffer_size()}>')
        return '<{}>'.format(' '.join(info))

    # (__del__ is Rust's, set below: it calls this when `_sock` is not None)
    def _warn_unclosed(self, _warn=warnings.warn):
        _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
        self._sock.close()
        detach_server(self)

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

    def _debug_log(self, message):
        logger.debug(message, self)


# Every transport object runs __del__ once, and nearly always finds its
# socket closed: Rust's (src/transport/unclosed.rs) costs no Python frame.
RustTransport.__del__ = transport_finalizer(RustTransport)
