"""`ferroloop.Loop`: the Rust `BaseEventLoop` (scheduling, timers, polling, fd
callbacks) plus the rest of asyncio's loop API.

What is not performance-critical is not rewritten: it is the running
interpreter's own asyncio code, reused unchanged from the classes that
define it (`_reuse` below), so its checks, messages and version-to-version
differences are exactly the standard loop's."""

import asyncio
import selectors
import socket
import sys
import threading
import types
import warnings
import weakref
from asyncio import coroutines, events, selector_events, unix_events
from asyncio.log import logger

from . import _ferroloop
from ._datagram import make_datagram_transport
from ._dns import getaddrinfo
from ._pipe import make_read_pipe_transport, make_write_pipe_transport
from ._server import accept_connection
from ._sock import sock_connect_attempt, sock_recv, sock_recv_into, sock_sendall
from ._sslproto import make_ssl_transport, start_tls
from ._stream import make_socket_transport
from ._subprocess import close_pidfds, make_subprocess_transport


# The standard loop on Unix; ferroloop reuses its methods, as resolved
# through its own MRO, so each name gets the version that loop really uses.
_STANDARD_LOOP = unix_events._UnixSelectorEventLoop


def _inherited(name, source=_STANDARD_LOOP):
    """A method of the standard loop (or of `source`), looked up on it at
    each access as inheritance would do: a patch of, say, `asyncio.
    BaseEventLoop.create_connection` (libraries' tests do this) reaches
    ferroloop too. The descriptor is Rust's (src/inherited.rs)."""
    return _ferroloop.Inherited(name, source)


def _with_class_cell(function, cls):
    """`function`, a method that uses zero-argument super(), with its
    `__class__` cell set to `cls`: asyncio's own code (same file, same name,
    so tools that allow-list asyncio's frames still recognise it) whose
    super() then continues along our class's MRO."""
    code = function.__code__
    closure = tuple(types.CellType(cls) if name == "__class__" else cell
                    for name, cell in zip(code.co_freevars, function.__closure__ or ()))
    return types.FunctionType(code, function.__globals__, function.__name__,
                              function.__defaults__, closure)


class _SelectorServing:
    """What super() reaches from the Unix loop's `_stop_serving`: the
    selector loop's version (stop accepting, close the socket)."""

    _stop_serving = _inherited("_stop_serving", selector_events.BaseSelectorEventLoop)


def _reuse(*names):
    """Give our class the named methods of the standard loop (those this
    Python version has; the others are listed in `_NOT_IN_THIS_PYTHON`)."""
    def decorate(target):
        target._NOT_IN_THIS_PYTHON = frozenset(n for n in names if not hasattr(_STANDARD_LOOP, n))
        for name in names:
            if name not in target._NOT_IN_THIS_PYTHON:
                setattr(target, name, _inherited(name))
        return target
    return decorate


class _SelectorView:
    """`loop._selector` for code written against the selector loop: lookups
    of the fds registered with add_reader/add_writer, and `unregister`
    (Twisted's asyncio reactor calls it after a failed add_reader)."""

    def __init__(self, loop):
        self._loop = loop

    def get_key(self, fileobj):
        fd = selectors._fileobj_to_fd(fileobj)
        reader, writer = self._loop._fd_handles(fd)
        if reader is None and writer is None:
            raise KeyError(f"{fileobj!r} is not registered")
        events = (selectors.EVENT_READ if reader is not None else 0) | \
                 (selectors.EVENT_WRITE if writer is not None else 0)
        return selectors.SelectorKey(fileobj, fd, events, (reader, writer))

    def unregister(self, fileobj):
        # As the selector's: the fd is no longer watched, its handles are
        # forgotten (here cancelled), its key is returned.
        key = self.get_key(fileobj)
        self._loop._remove_reader(key.fd)
        self._loop._remove_writer(key.fd)
        return key


def _name_as_standard(*names):
    """Give our own versions of these methods the qualified name of the
    standard loop's, so a bad call's TypeError reads the same
    ("BaseSelectorEventLoop.sock_recv() missing 1 required positional
    argument: 'n'"); 3.11+ takes that name from the code object."""
    def decorate(target):
        for name in names:
            function = vars(target)[name]
            if function.__module__.startswith(__package__):  # (else the standard loop's own)
                _give_standard_name(function, name)
        return target
    return decorate


def _give_standard_name(function, name):
    owner = next(c for c in _STANDARD_LOOP.__mro__ if name in vars(c))
    qualname = f"{owner.__name__}.{name}"
    if hasattr(function.__code__, "co_qualname"):
        function.__code__ = function.__code__.replace(co_qualname=qualname)
    function.__qualname__ = qualname


# asyncio 3.13+ sets a run up inside the try whose finally cleans it up.
_SETUP_INSIDE_TRY = sys.version_info >= (3, 13)


def _read_from_self(loop_ref):
    loop = loop_ref()
    if loop is not None:
        loop._read_from_self()


# The loop's `_accept_connection` is Rust's (src/accept.rs); this is what it
# runs for anything but a plain server, and for a call with arguments missing.
_give_standard_name(accept_connection, "_accept_connection")


@_reuse(
    # run_until_complete, tasks, debug, async generators, the executor
    "__repr__", "__del__", "_check_running", "_check_callback", "set_debug",
    "_set_coroutine_origin_tracking", "run_until_complete",
    "set_task_factory", "get_task_factory",
    "_asyncgen_firstiter_hook", "_asyncgen_finalizer_hook", "shutdown_asyncgens",
    "run_in_executor", "set_default_executor", "shutdown_default_executor",
    "_do_shutdown", "_check_default_executor",
    # exception handling
    "get_exception_handler", "set_exception_handler",
    "default_exception_handler", "call_exception_handler",
    # name resolution (getaddrinfo has a fast path of its own, _dns.py)
    "_getaddrinfo_debug", "getnameinfo", "_ensure_resolved",
    # the self-pipe and signals
    "_close_self_pipe", "_read_from_self", "_process_self_data", "_add_callback_signalsafe",
    "add_signal_handler", "remove_signal_handler", "_handle_signal", "_check_signal",
    # sock_* coroutines
    "_ensure_fd_no_transport",
    # (sock_recv, sock_recv_into and sock_sendall have Rust fast paths,
    # _sock.py; these helpers are their fallback)
    "_sock_recv", "_sock_recv_into",
    "sock_recvfrom", "_sock_recvfrom", "sock_recvfrom_into", "_sock_recvfrom_into",
    "_sock_sendall", "sock_sendto", "_sock_sendto",
    # (the connect step, _sock_connect, is _sock.py's)
    "sock_connect", "_sock_connect_cb", "sock_accept", "_sock_accept",
    "_sock_read_done", "_sock_write_done",
    # connections, servers, datagrams, sendfile (TLS: _sslproto.py)
    "create_connection", "_connect_sock", "_create_connection_transport",
    "create_server", "_create_server_getaddrinfo", "connect_accepted_socket",
    "create_unix_connection", "create_unix_server",
    "create_datagram_endpoint",
    "sendfile", "_sendfile_native", "_sendfile_fallback",
    "sock_sendfile", "_sock_sendfile_native", "_sock_sendfile_native_impl",
    "_sock_sendfile_update_filepos", "_sock_add_cancellation_callback",
    "_sock_sendfile_fallback", "_check_sendfile_params",
    # pipes and subprocesses
    "connect_read_pipe", "connect_write_pipe",
    "subprocess_shell", "subprocess_exec", "_log_subprocess",
    "_child_watcher_callback",
    # the accept loop, driven by ferroloop's fd callbacks (each batch of
    # accepted connections: src/accept.rs and _server.py)
    "_start_serving", "_accept_connection2",
)
@_name_as_standard("getaddrinfo", "sock_recv", "sock_recv_into", "sock_sendall", "start_tls",
                   "_sock_connect", "run_forever", "close")
class Loop(_ferroloop.BaseEventLoop, _SelectorServing, asyncio.AbstractEventLoop):
    """An asyncio event loop whose core runs in Rust."""

    getaddrinfo = getaddrinfo
    sock_recv = sock_recv
    sock_recv_into = sock_recv_into
    sock_sendall = sock_sendall
    _sock_connect = sock_connect_attempt
    _make_subprocess_transport = make_subprocess_transport
    _make_datagram_transport = make_datagram_transport
    _make_socket_transport = make_socket_transport
    _make_ssl_transport = make_ssl_transport
    start_tls = start_tls
    _make_read_pipe_transport = make_read_pipe_transport
    _make_write_pipe_transport = make_write_pipe_transport
    # create_task with a task factory or in debug mode (the Rust create_task
    # does the common case itself).
    _create_task_fallback = _inherited("create_task")

    @property
    def _selector(self):
        # The selector loop's transports (and some tests) look registrations
        # up through loop._selector; this is a read-only view of ours.
        return None if self.is_closed() else _SelectorView(self)

    def __init__(self):
        super().__init__()
        self._refresh_time_source()  # a subclass may define its own time()
        self._exception_handler = None
        self._default_executor = None
        self._executor_shutdown_called = False
        self._task_factory = None
        self._asyncgens = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self._old_agen_hooks = None
        self._signal_handlers = {}
        self._transports = weakref.WeakValueDictionary()
        self._unix_server_sockets = {}  # 3.13+: paths create_unix_server cleans up
        self._child_pidfds = {}  # pid -> pidfd of the children being watched
        self._internal_fds = 0
        self._make_self_pipe()
        self.set_debug(coroutines._is_debug_mode())

    def _make_self_pipe(self):
        # asyncio's self-pipe (the wakeup fd of signal handlers), but its
        # reader holds the loop weakly: ferroloop's handles are invisible to
        # the cycle collector, so a bound method here would keep an unclosed
        # loop alive forever.
        self._ssock, self._csock = socket.socketpair()
        self._ssock.setblocking(False)
        self._csock.setblocking(False)
        self._internal_fds += 1
        self._set_internal_fd(self._ssock.fileno())
        self._add_reader(self._ssock.fileno(), _read_from_self, weakref.ref(self))

    # ----- running ----------------------------------------------------------

    def _run_forever_setup(self):
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        self._old_agen_hooks = sys.get_asyncgen_hooks()
        self._thread_id = threading.get_ident()
        sys.set_asyncgen_hooks(firstiter=self._asyncgen_firstiter_hook,
                               finalizer=self._asyncgen_finalizer_hook)
        events._set_running_loop(self)

    def _run_forever_cleanup(self):
        self._stopping = False
        self._thread_id = None
        events._set_running_loop(None)
        self._set_coroutine_origin_tracking(False)
        if self._old_agen_hooks is not None:
            sys.set_asyncgen_hooks(*self._old_agen_hooks)
            self._old_agen_hooks = None

    def run_forever(self):
        """Run until stop() is called."""
        if _SETUP_INSIDE_TRY:
            try:
                self._run_forever_setup()
                self._run()
            finally:
                self._run_forever_cleanup()
        else:
            # Before 3.13 a refused nested run leaves the running loop's state alone.
            self._run_forever_setup()
            try:
                self._run()
            finally:
                self._run_forever_cleanup()

    def close(self):
        """Close the loop: drop pending callbacks, release the poller, shut
        the default executor down without waiting, remove signal handlers."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self._debug:
            logger.debug("Close %r", self)
        self._close_core()
        self._close_self_pipe()
        close_pidfds(self)
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            warnings.warn(f"Closing the loop {self!r} on interpreter shutdown "
                          f"stage, skipping signal handlers removal",
                          ResourceWarning, source=self)
            self._signal_handlers.clear()


# 3.13+: the Unix loop's own _stop_serving also removes the socket file that
# create_unix_server made; it is asyncio's code, its super() reaching
# _SelectorServing. Before 3.13 the selector loop's version is the one.
if "_stop_serving" in vars(_STANDARD_LOOP):
    Loop._stop_serving = _with_class_cell(_STANDARD_LOOP._stop_serving, Loop)
