"""Event-loop factories shared by every benchmark suite.

Each entry maps a loop name to a zero-argument function returning a *new*
event loop.  The import happens inside the factory, so a missing package
raises ImportError only when that loop is actually requested.
"""

import asyncio
import os

LOOP_NAMES = ("ferroloop", "uvloop", "asyncio")


def _ferroloop():
    import ferroloop

    return ferroloop.new_event_loop()


def _uvloop():
    import uvloop

    return uvloop.new_event_loop()


def _asyncio():
    # The stdlib default on Linux: _UnixSelectorEventLoop over epoll.
    return asyncio.new_event_loop()


FACTORIES = {
    "ferroloop": _ferroloop,
    "uvloop": _uvloop,
    "asyncio": _asyncio,
}


def new_loop(name):
    try:
        factory = FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown loop {name!r}; known: {', '.join(FACTORIES)}") from None
    return factory()


def describe(name):
    """Short version string for the report (called in a child process)."""
    if name == "ferroloop":
        import ferroloop

        version = getattr(ferroloop, "__version__", None)
        if version is None:
            try:
                from importlib.metadata import version as dist_version

                version = dist_version("ferroloop")
            except Exception:
                version = "?"
        return f"ferroloop {version} ({os.path.dirname(ferroloop.__file__)})"
    if name == "uvloop":
        import uvloop

        return f"uvloop {uvloop.__version__}"
    import platform

    return f"asyncio (CPython {platform.python_version()})"
