"""`ferroloop.Loop`: the Rust `LoopCore` (scheduling, timers, polling, fd
callbacks) plus the rest of asyncio's loop API.

What is not performance-critical is not rewritten: it is the running
interpreter's own asyncio code, reused unchanged from the classes that
define it (`_reuse` below), so its checks, messages and version-to-version
differences are exactly the standard loop's."""

import asyncio
import socket
import sys
import threading
import warnings
import weakref
from asyncio import base_events, coroutines, events, selector_events, unix_events
from asyncio.log import logger

from . import _ferroloop
from ._dns import getaddrinfo


def _reuse(cls, *names):
    """Copy the named methods of an asyncio loop class onto ours (if this
    Python version has them)."""
    def decorate(target):
        for name in names:
            func = cls.__dict__.get(name)
            if func is not None:
                setattr(target, name, func)
        return target
    return decorate


def _read_from_self(loop_ref):
    loop = loop_ref()
    if loop is not None:
        loop._read_from_self()


@_reuse(base_events.BaseEventLoop,
        "__repr__", "__del__", "_check_running", "_check_callback", "set_debug",
        "_set_coroutine_origin_tracking", "run_until_complete",
        "create_task", "set_task_factory", "get_task_factory",
        "_asyncgen_firstiter_hook", "_asyncgen_finalizer_hook", "shutdown_asyncgens",
        "run_in_executor", "set_default_executor", "shutdown_default_executor",
        "_do_shutdown", "_check_default_executor",
        "_getaddrinfo_debug", "getnameinfo", "_ensure_resolved",
        "get_exception_handler", "set_exception_handler",
        "default_exception_handler", "call_exception_handler",
        "_add_callback_signalsafe")
@_reuse(selector_events.BaseSelectorEventLoop,
        "_close_self_pipe", "_read_from_self", "_ensure_fd_no_transport",
        "sock_recv", "_sock_recv", "sock_recv_into", "_sock_recv_into",
        "sock_recvfrom", "_sock_recvfrom", "sock_recvfrom_into", "_sock_recvfrom_into",
        "sock_sendall", "_sock_sendall", "sock_sendto", "_sock_sendto",
        "sock_connect", "_sock_connect", "_sock_connect_cb", "sock_accept", "_sock_accept",
        "_sock_read_done", "_sock_write_done", "_stop_serving")
@_reuse(unix_events._UnixSelectorEventLoop,
        "_process_self_data", "add_signal_handler", "remove_signal_handler",
        "_handle_signal", "_check_signal")
class Loop(_ferroloop.LoopCore, asyncio.AbstractEventLoop):
    """An asyncio event loop whose core runs in Rust."""

    getaddrinfo = getaddrinfo

    def __init__(self):
        super().__init__()
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
        try:
            self._run_forever_setup()
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
        self._close_self_pipe()
        self._close_core()
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
