"""ferroloop: an asyncio event loop for CPython, written in Rust.

    import ferroloop
    ferroloop.run(main())                                   # like asyncio.run
    asyncio.run(main(), loop_factory=ferroloop.new_event_loop)   # 3.12+
    ferroloop.install()                                     # asyncio.run() uses ferroloop
    python -m ferroloop script.py                           # unmodified scripts
"""

import asyncio as _asyncio
import sys as _sys
from asyncio import events as _events

from ._ferroloop import Handle, TimerHandle
from ._loop import Loop

if _sys.version_info < (3, 12):
    del Handle.get_context  # asyncio's handles have it from 3.12 on

__all__ = ("Loop", "new_event_loop", "run", "EventLoopPolicy", "install", "Handle", "TimerHandle")
__version__ = "0.1.0"


def new_event_loop():
    """A new ferroloop event loop."""
    return Loop()


class EventLoopPolicy(_asyncio.DefaultEventLoopPolicy):
    """The default policy, creating ferroloop loops."""

    def _loop_factory(self):
        return new_event_loop()


def install():
    """Make ferroloop the loop that asyncio.run() and asyncio.new_event_loop() create."""
    _asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, debug=None):
    """Run a coroutine on a new ferroloop loop: the contract of asyncio.run()."""
    if _sys.version_info >= (3, 12):
        return _asyncio.run(main, debug=debug, loop_factory=new_event_loop)
    if _events._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    if _sys.version_info >= (3, 11):
        with _asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
            return runner.run(main)
    return _run_310(main, debug)


def _run_310(main, debug):
    # Python 3.10's asyncio.run, with ferroloop as the loop.
    from asyncio import coroutines, runners
    if not coroutines.iscoroutine(main):
        raise ValueError("a coroutine was expected, got {!r}".format(main))
    loop = new_event_loop()
    try:
        _events.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:
        try:
            runners._cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            _events.set_event_loop(None)
            loop.close()
