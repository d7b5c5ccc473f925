"""run_in_executor, default executor, shutdown_default_executor."""

import asyncio
import concurrent.futures
import sys
import threading

import pytest

from conftest import exc_outcome


def test_run_in_executor_returns_result(loop):
    main_thread = threading.get_ident()

    def work(a, b):
        return a + b, threading.get_ident() != main_thread

    assert loop.run_until_complete(loop.run_in_executor(None, work, 2, 3)) \
        == (5, True)
    loop.run_until_complete(loop.shutdown_default_executor())


def test_run_in_executor_exception(same):
    def scenario(loop, trace):
        def boom():
            raise KeyError("exec")
        trace.append(exc_outcome(loop.run_until_complete,
                                 loop.run_in_executor(None, boom)))
        loop.run_until_complete(loop.shutdown_default_executor())

    assert same(scenario) == [("KeyError", "'exec'")]


@pytest.mark.uvloop_differs("uvloop default executor threads not named")
def test_default_executor_thread_names(same):
    def scenario(loop, trace):
        name = loop.run_until_complete(loop.run_in_executor(
            None, lambda: threading.current_thread().name))
        trace.append(name.split("_")[0])
        loop.run_until_complete(loop.shutdown_default_executor())

    assert same(scenario) == ["asyncio"]


def test_explicit_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        fut = loop.run_in_executor(ex, sum, [1, 2, 3])
        assert isinstance(fut, asyncio.Future)
        assert loop.run_until_complete(fut) == 6


def test_run_in_executor_many_concurrent(loop):
    import time

    async def main():
        return await asyncio.gather(*(
            loop.run_in_executor(None, lambda i=i: (time.sleep(0.01), i)[1])
            for i in range(40)))
    assert loop.run_until_complete(main()) == list(range(40))
    loop.run_until_complete(loop.shutdown_default_executor())


def test_set_default_executor_thread_pool(loop):
    ex = concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix="custom-prefix")
    loop.set_default_executor(ex)
    name = loop.run_until_complete(loop.run_in_executor(
        None, lambda: threading.current_thread().name))
    assert name.startswith("custom-prefix")
    loop.run_until_complete(loop.shutdown_default_executor())
    ex.shutdown()


@pytest.mark.uvloop_differs("uvloop accepts any executor")
def test_set_default_executor_non_thread_pool(same):
    class MyExecutor(concurrent.futures.Executor):
        def submit(self, fn, *args, **kwargs):
            f = concurrent.futures.Future()
            f.set_result(fn(*args, **kwargs))
            return f

    def scenario(loop, trace):
        import warnings
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            trace.append(exc_outcome(loop.set_default_executor,
                                     MyExecutor()))
        trace.append([(x.category.__name__, str(x.message)) for x in w])

    t = same(scenario)
    if sys.version_info >= (3, 11):
        assert t[0][0] == "TypeError"


def test_shutdown_default_executor(same):
    def scenario(loop, trace):
        trace.append(loop.run_until_complete(loop.run_in_executor(
            None, lambda: "before")))
        trace.append(loop.run_until_complete(
            loop.shutdown_default_executor()))
        trace.append(exc_outcome(loop.run_in_executor, None, print))
        # a second shutdown is harmless
        trace.append(loop.run_until_complete(
            loop.shutdown_default_executor()))

    assert same(scenario) == ["before", None,
                              ("RuntimeError",
                               "Executor shutdown has been called"), None]


def test_shutdown_default_executor_without_executor(same):
    def scenario(loop, trace):
        trace.append(loop.run_until_complete(
            loop.shutdown_default_executor()))

    assert same(scenario) == [None]


@pytest.mark.uvloop_differs("uvloop does not check executor callbacks")
def test_run_in_executor_rejects_coroutine_function(same):
    async def coro_fn():
        pass

    def scenario(loop, trace):
        trace.append(exc_outcome(loop.run_in_executor, None, coro_fn))
        c = coro_fn()
        trace.append(exc_outcome(loop.run_in_executor, None, c))
        c.close()

    assert same(scenario, debug=True)[0] == (
        "TypeError", "coroutines cannot be used with run_in_executor()")


def test_run_in_executor_on_closed_loop(same):
    def scenario(loop, trace):
        loop.close()
        trace.append(exc_outcome(loop.run_in_executor, None, print))

    assert same(scenario) == [("RuntimeError", "Event loop is closed")]


def test_to_thread(loop):
    async def main():
        return await asyncio.to_thread(lambda: threading.current_thread()
                                       is not threading.main_thread())
    assert loop.run_until_complete(main()) is True
    loop.run_until_complete(loop.shutdown_default_executor())
