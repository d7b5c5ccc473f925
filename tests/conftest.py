"""Shared fixtures and helpers for ferroloop's own test suite.

Most tests are *differential*: the same scenario runs on a ferroloop loop and
on the standard library's loop (``asyncio.SelectorEventLoop``) and the
results (callback order, return values, exception types and messages) must
be equal.  The standard loop is the oracle.

Choosing the implementation under test
--------------------------------------
By default the implementation under test is the ``ferroloop`` package.  To
check that the suite itself is sane before ferroloop exists (or to compare),
set ``FERROLOOP_TEST_STANDIN``:

* ``FERROLOOP_TEST_STANDIN=asyncio`` – "ferroloop" is the standard loop
  itself; every test must pass (this validates the tests).
* ``FERROLOOP_TEST_STANDIN=uvloop``  – "ferroloop" is uvloop.  Tests marked
  ``uvloop_differs`` check stdlib behaviour that uvloop does not copy; they
  become non-strict xfails in this mode only.

Helpers (available as fixtures and importable from ``conftest``):

* ``run_on(factory, scenario, debug=False)`` – build a loop, run the scenario
  and return its trace list.  ``scenario`` is either ``def s(loop, trace)``
  (drives the loop itself) or ``async def s(loop, trace)`` (run with
  ``run_until_complete``).
* ``same(scenario, ...)`` – ``run_on`` both loops, assert equal traces,
  return the trace.
* ``outcome(fn, *args)`` – ``("ok", result)`` or ``(ExcTypeName, str(exc))``.
"""

import asyncio
import faulthandler
import importlib
import inspect
import os
import socket
import subprocess
import sys
import textwrap

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TESTS_DIR)
STANDIN = os.environ.get("FERROLOOP_TEST_STANDIN", "").strip().lower()
PER_TEST_TIMEOUT = float(os.environ.get("FERROLOOP_TEST_TIMEOUT", "60"))


# --------------------------------------------------------------------------
# the implementation under test
# --------------------------------------------------------------------------

class Impl:
    """What the suite needs from the implementation under test."""

    def __init__(self, name, module, import_line):
        self.name = name
        self.module = module
        self.new_event_loop = module.new_event_loop
        self.Loop = module.Loop
        self.run = module.run
        self.EventLoopPolicy = module.EventLoopPolicy
        self.install = module.install
        # Python statement that binds the implementation as ``impl`` in a
        # child interpreter (PYTHONPATH includes tests/ there).
        self.import_line = import_line

    def module_cmd(self, script, *args):
        """argv for ``python -m ferroloop script args...`` (or a stand-in)."""
        if self.name == "ferroloop":
            return [sys.executable, "-m", "ferroloop", script, *args]
        shim = (
            "import sys, runpy, warnings\n"
            "warnings.simplefilter('ignore', DeprecationWarning)\n"
            f"{self.import_line}\n"
            "impl.install()\n"
            "sys.argv = sys.argv[1:]\n"
            "sys.path[0] = __import__('os').path.dirname(sys.argv[0])\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n"
        )
        return [sys.executable, "-c", shim, script, *args]


def _load_impl():
    if STANDIN in ("", "ferroloop"):
        mod = importlib.import_module("ferroloop")
        return Impl("ferroloop", mod, "import ferroloop as impl")
    if STANDIN == "uvloop":
        mod = importlib.import_module("uvloop")
        return Impl("uvloop", mod, "import uvloop as impl")
    if STANDIN in ("asyncio", "stdlib"):
        sys.path.insert(0, TESTS_DIR)
        mod = importlib.import_module("_stdlib_standin")
        return Impl("asyncio", mod, "import _stdlib_standin as impl")
    raise RuntimeError(f"unknown FERROLOOP_TEST_STANDIN={STANDIN!r}")


try:
    IMPL = _load_impl()
    IMPL_ERROR = None
except Exception as e:  # pragma: no cover - reported by the fixture
    IMPL = None
    IMPL_ERROR = e


def stdlib_factory():
    return asyncio.SelectorEventLoop()


def impl_factory():
    if IMPL is None:
        pytest.fail(
            f"ferroloop is not importable ({IMPL_ERROR!r}); build it with "
            "scripts/build.sh, or set FERROLOOP_TEST_STANDIN=uvloop|asyncio "
            "to validate the suite", pytrace=False)
    return IMPL.new_event_loop()


impl_factory.impl_name = "ferroloop"
stdlib_factory.impl_name = "asyncio"

FACTORIES = {"ferroloop": impl_factory, "asyncio": stdlib_factory}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def run_on(factory, scenario, *, debug=False, timeout=20.0):
    """Run ``scenario`` on a fresh loop from ``factory``; return its trace."""
    loop = factory()
    trace = []
    try:
        loop.set_debug(debug)
        if inspect.iscoroutinefunction(scenario):
            async def guarded():
                return await asyncio.wait_for(scenario(loop, trace), timeout)
            loop.run_until_complete(guarded())
        else:
            scenario(loop, trace)
    finally:
        if not loop.is_closed() and not loop.is_running():
            loop.close()
    return trace


def same(scenario, *, debug=False, normalize=None, timeout=20.0):
    """Run the scenario on ferroloop and on the standard loop; traces must
    be equal (after ``normalize``).  Returns the standard loop's trace."""
    expected = run_on(stdlib_factory, scenario, debug=debug, timeout=timeout)
    got = run_on(impl_factory, scenario, debug=debug, timeout=timeout)
    if normalize is not None:
        expected = normalize(expected)
        got = normalize(got)
    assert got == expected, (
        f"\nferroloop: {got!r}\nasyncio:   {expected!r}")
    return expected


def outcome(fn, *args, **kwargs):
    """Call fn; return ("ok", result) or (exception type name, message)."""
    try:
        return ("ok", fn(*args, **kwargs))
    except BaseException as e:  # noqa: B902 - we want everything
        return (type(e).__name__, str(e))


def exc_outcome(fn, *args, **kwargs):
    """Like outcome but the result of a successful call is dropped."""
    r = outcome(fn, *args, **kwargs)
    return ("ok",) if r[0] == "ok" else r


def counting_socket_class(*methods):
    """A socket.socket subclass whose instances record in ``self.calls`` the
    names of ``methods`` called on them (each override calls the original)."""
    def override(name):
        def method(self, *args):
            self.calls.add(name)
            return getattr(socket.socket, name)(self, *args)
        method.__name__ = name
        return method

    def __init__(self, *args, **kwargs):
        socket.socket.__init__(self, *args, **kwargs)
        self.calls = set()

    namespace = {name: override(name) for name in methods}
    namespace["__init__"] = __init__
    return type("CountingSocket", (socket.socket,), namespace)


def child_env(**extra):
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [TESTS_DIR] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra)
    return env


def run_python(code, *args, timeout=30, env=None, **popen):
    """Run ``code`` in a child interpreter; ``IMPL_IMPORT`` in the code is
    replaced by the statement binding the implementation as ``impl``."""
    code = textwrap.dedent(code).replace("IMPL_IMPORT", IMPL.import_line)
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True,
        timeout=timeout, env=env or child_env(), **popen)


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def impl():
    if IMPL is None:
        pytest.fail(
            f"ferroloop is not importable ({IMPL_ERROR!r}); build it with "
            "scripts/build.sh, or set FERROLOOP_TEST_STANDIN=uvloop|asyncio "
            "to validate the suite", pytrace=False)
    return IMPL


@pytest.fixture(params=["ferroloop", "asyncio"])
def factory(request, impl):
    """A loop factory: each test using it runs once per implementation."""
    return FACTORIES[request.param]


@pytest.fixture
def loop(factory):
    lp = factory()
    yield lp
    if not lp.is_closed() and not lp.is_running():
        lp.close()


@pytest.fixture
def factories(impl):
    return dict(FACTORIES)


@pytest.fixture(name="run_on")
def _run_on_fixture(impl):
    return run_on


@pytest.fixture(name="same")
def _same_fixture(impl):
    return same


@pytest.fixture(autouse=True)
def _watchdog():
    """A hung loop must not hang CI: dump stacks and exit after a while."""
    faulthandler.dump_traceback_later(PER_TEST_TIMEOUT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def _no_leaked_policy():
    yield
    # tests that install a policy must not leak it into the next test
    if sys.version_info < (3, 14):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(None)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "uvloop_differs(reason): stdlib behaviour that uvloop does not copy; "
        "xfail (non-strict) only when FERROLOOP_TEST_STANDIN=uvloop")


def pytest_collection_modifyitems(config, items):
    if STANDIN != "uvloop":
        return
    for item in items:
        m = item.get_closest_marker("uvloop_differs")
        if m is not None:
            reason = m.args[0] if m.args else "uvloop differs from stdlib"
            item.add_marker(pytest.mark.xfail(reason=reason, strict=False))


def pytest_report_header(config):
    if IMPL is None:
        return f"ferroloop implementation: NOT IMPORTABLE ({IMPL_ERROR!r})"
    return (f"ferroloop implementation under test: {IMPL.name} "
            f"({getattr(IMPL.module, '__file__', '?')})")


class capture_log:
    """Collect records of the 'asyncio' logger (or another) in a list."""

    def __init__(self, name="asyncio", level=None):
        import logging
        self.logger = logging.getLogger(name)
        self.level = level if level is not None else logging.DEBUG
        self.records = []
        outer = self

        class H(logging.Handler):
            def emit(self, record):
                outer.records.append(record)
        self.handler = H(level=self.level)

    def __enter__(self):
        self.old_level = self.logger.level
        self.logger.setLevel(self.level)
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.old_level)
        return False

    def summary(self, min_level=0):
        return [(r.levelname, r.getMessage(),
                 r.exc_info[0].__name__ if r.exc_info and r.exc_info[0]
                 else None)
                for r in self.records if r.levelno >= min_level]


def shown_args(text):
    """How asyncio's repr shows a callback's arguments: Python 3.13+ hides
    them outside debug mode."""
    return text if sys.version_info < (3, 13) else "()"
