"""Cold paths of Handle/TimerHandle that the Rust core calls back into:
repr, the "Exception in callback" report, debug-mode source tracebacks and
slow-callback warnings. Written with asyncio's own helpers so the text is
the running interpreter's, version for version."""

import inspect
import sys
from asyncio import base_events, format_helpers
from asyncio.log import logger

_SOURCE_TAKES_DEBUG = "debug" in inspect.signature(format_helpers._format_callback_source).parameters


def _callback_source(handle, func, args):
    if _SOURCE_TAKES_DEBUG:
        return format_helpers._format_callback_source(func, args, debug=handle._loop.get_debug())
    return format_helpers._format_callback_source(func, args)


def handle_repr(handle):
    """asyncio.Handle.__repr__ (and TimerHandle's, which adds when=)."""
    info = [type(handle).__name__]
    if handle._cancelled:
        info.append("cancelled")
    callback = handle._callback
    if callback is not None:
        info.append(_callback_source(handle, callback, handle._args))
    source_traceback = handle._source_traceback
    if source_traceback:
        frame = source_traceback[-1]
        info.append(f"created at {frame[0]}:{frame[1]}")
    when = getattr(handle, "_when", None)
    if when is not None:
        info.insert(2 if handle._cancelled else 1, f"when={when}")
    return "<{}>".format(" ".join(info))


def report_callback_error(handle, func, args, exc):
    """What asyncio.Handle._run does when the callback raises."""
    context = {
        "message": f"Exception in callback {_callback_source(handle, func, args)}",
        "exception": exc,
        "handle": handle,
    }
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


def extract_stack():
    # Frame 1 is the code that called call_soon & co.: the Rust method adds
    # no frame of its own, so nothing needs trimming as asyncio does.
    return format_helpers.extract_stack(sys._getframe(1))


def warn_slow_callback(handle, seconds):
    logger.warning("Executing %s took %.3f seconds", base_events._format_handle(handle), seconds)
