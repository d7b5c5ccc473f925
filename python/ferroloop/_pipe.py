"""Pipe transports: `ReadPipeTransport` and `WritePipeTransport`, over the
Rust `ReadPipeCore` / `WritePipeCore` (src/transport/pipe/).

They are asyncio's `unix_events._UnixReadPipeTransport` and
`_UnixWritePipeTransport` with the hot paths (reading, writing, the write
queue, flow control) in Rust. The cold parts are the interpreter's own:
`__repr__`, `__del__` and `_fatal_error` are the standard classes' functions
reused as they are, and `__init__`/`_call_connection_lost` are theirs
rewritten line for line around the core, so checks, messages and callback
order match version for version."""

import os
import stat
import sys
from asyncio import futures, transports, unix_events
from asyncio.log import logger

from ._ferroloop import ReadPipeCore, WritePipeCore
from ._transport import CoreFlowControl, CoreMethods

_StdRead = unix_events._UnixReadPipeTransport
_StdWrite = unix_events._UnixWritePipeTransport
# 3.11+: the read pipe has is_reading(), and starts reading only if it
# still reads when connection_made() has run; 3.10 registers its reader
# unconditionally.
_PY311 = sys.version_info >= (3, 11)


class _PipeTransport(CoreMethods):
    """What both pipe transports share: the core's methods bound as the
    transport's own, the state asyncio's code reads off a pipe transport,
    the end of the connection."""

    # Read by __del__ and __repr__, also when __init__ failed early.
    _pipe = None
    _core = None

    def _check_fd_type(self, core, ok, message):
        # As asyncio: a pipe transport refuses to own anything else (and
        # keeps no reference to the pipe, which its caller still owns).
        if not ok:
            self._pipe = None
            self._fileno = None
            core._release()
            raise ValueError(message)

    _protocol = property(lambda self: self._core.get_protocol(),
                         lambda self, protocol: self._core.set_protocol(protocol))
    _closing = property(lambda self: self._core.is_closing())

    def _log_closed_by_peer(self):
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)

    def _debug_log(self, message):
        logger.debug(message, self)

    def _call_connection_lost(self, exc):
        core = self._core
        try:
            self._protocol.connection_lost(exc)
        finally:
            core._release()
            # The pipe (and its fd) is closed here and only here.
            self._pipe.close()
            self._pipe = None
            self._loop = None


class ReadPipeTransport(_PipeTransport, transports.ReadTransport):
    """The read end of a pipe, a FIFO, a character device or a socket."""

    _CORE_METHODS = (
        "pause_reading", "resume_reading", "close", "is_closing",
        "get_protocol", "set_protocol", "_close",
    ) + (("is_reading",) if _PY311 else ())
    max_size = 256 * 1024  # the most one read takes (fixed in the core)

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra)
        self._extra['pipe'] = pipe
        self._loop = loop
        self._pipe = pipe
        self._fileno = pipe.fileno()
        core = ReadPipeCore(loop, pipe, self, protocol)
        self._core = core

        mode = os.fstat(self._fileno).st_mode
        self._check_fd_type(core, stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode),
                            "Pipe transport is for pipes/sockets only.")

        os.set_blocking(self._fileno, False)

        loop.call_soon(protocol.connection_made, self)
        # only start reading when connection_made() has been called
        if _PY311:
            loop.call_soon(core._start_reading)
        else:
            loop.call_soon(loop._add_reader, self._fileno, core._read_ready)
        if waiter is not None:
            # only wake up the waiter when connection_made() has been called
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    _paused = property(lambda self: self._core._paused)

    __repr__ = _StdRead.__repr__
    __del__ = _StdRead.__del__
    _fatal_error = _StdRead._fatal_error


class WritePipeTransport(_PipeTransport, CoreFlowControl, transports._FlowControlMixin, transports.WriteTransport):
    """The write end of a pipe, a FIFO, a character device or a socket."""

    _CORE_METHODS = (
        "write", "write_eof", "can_write_eof", "abort", "get_write_buffer_size", "is_closing",
        "get_protocol", "set_protocol", "_close", "_maybe_pause_protocol", "_maybe_resume_protocol",
    )

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        # Not _FlowControlMixin.__init__: the flow-control state is the core's.
        transports.BaseTransport.__init__(self, extra)
        self._loop = loop
        self._extra['pipe'] = pipe
        self._pipe = pipe
        self._fileno = pipe.fileno()
        core = WritePipeCore(loop, pipe, self, protocol)
        self._core = core

        mode = os.fstat(self._fileno).st_mode
        is_char = stat.S_ISCHR(mode)
        is_fifo = stat.S_ISFIFO(mode)
        is_socket = stat.S_ISSOCK(mode)
        self._check_fd_type(core, is_char or is_fifo or is_socket,
                            "Pipe transport is only for pipes, sockets and character devices")

        os.set_blocking(self._fileno, False)
        loop.call_soon(protocol.connection_made, self)

        # On AIX, the reader trick (to be notified when the read end of the
        # socket is closed) only works for sockets. On other platforms it
        # works for pipes and sockets.
        if is_socket or (is_fifo and not sys.platform.startswith("aix")):
            # only start reading when connection_made() has been called
            loop.call_soon(loop._add_reader, self._fileno, core._read_ready)

        if waiter is not None:
            # only wake up the waiter when connection_made() has been called
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    _protocol_paused = property(lambda self: self._core._protocol_paused)
    _conn_lost = property(lambda self: self._core._conn_lost)

    def close(self):
        if self._pipe is not None and not self._core.is_closing():
            # write_eof is all what we needed to close the write pipe
            self.write_eof()

    __repr__ = _StdWrite.__repr__
    __del__ = _StdWrite.__del__
    _fatal_error = _StdWrite._fatal_error


def make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
    return ReadPipeTransport(self, pipe, protocol, waiter, extra)


def make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
    return WritePipeTransport(self, pipe, protocol, waiter, extra)
