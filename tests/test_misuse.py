"""Misuse must raise the same errors as the standard loop, never crash."""

import asyncio
import gc
import os
import socket
import sys
import threading
import warnings

import pytest

from conftest import exc_outcome, outcome, run_python


def test_close_while_running(same):
    def scenario(loop, trace):
        def cb():
            trace.append(exc_outcome(loop.close))
            trace.append(loop.is_closed())
            loop.stop()
        loop.call_soon(cb)
        loop.run_forever()
        loop.close()
        trace.append(loop.is_closed())

    assert same(scenario) == [
        ("RuntimeError", "Cannot close a running event loop"), False, True]


def test_run_until_complete_future_from_other_loop(factories):
    results = {}
    for name, factory in factories.items():
        a, b = factory(), factory()
        try:
            fut = b.create_future()
            results[name] = exc_outcome(a.run_until_complete, fut)
        finally:
            a.close()
            b.close()
    assert results["ferroloop"] == results["asyncio"] == (
        "ValueError",
        "The future belongs to a different loop than the one specified as "
        "the loop argument")


def test_task_from_other_loop(factories):
    results = {}
    for name, factory in factories.items():
        a, b = factory(), factory()
        try:
            async def main():
                return 1
            t = b.create_task(main())
            results[name] = exc_outcome(a.run_until_complete, t)
            b.run_until_complete(t)
        finally:
            a.close()
            b.close()
    assert results["ferroloop"] == results["asyncio"]


@pytest.mark.uvloop_differs("uvloop differs")
def test_run_forever_in_two_threads(same):
    def scenario(loop, trace):
        res = []

        def cb():
            t = threading.Thread(target=lambda: res.append(
                exc_outcome(loop.run_forever)))
            t.start()
            t.join()
            loop.stop()
        loop.call_soon(cb)
        loop.run_forever()
        trace.extend(res)

    assert same(scenario) == [("RuntimeError",
                               "This event loop is already running")]


@pytest.mark.uvloop_differs("uvloop differs")
@pytest.mark.parametrize("method", [
    "call_soon", "call_later", "call_at", "run_forever", "create_task",
    "run_in_executor", "add_reader", "add_writer", "getaddrinfo",
    "set_debug", "get_debug", "time", "is_running", "stop",
    "remove_reader", "shutdown_asyncgens", "create_future",
])
def test_closed_loop_methods(same, method):
    def scenario(loop, trace):
        a, b = socket.socketpair()
        loop.close()
        try:
            async def coro():
                pass
            c = coro()
            args = {
                "call_soon": (print,), "call_later": (1, print),
                "call_at": (1, print), "run_forever": (),
                "create_task": (c,), "run_in_executor": (None, print),
                "add_reader": (a, print), "add_writer": (a, print),
                "getaddrinfo": ("127.0.0.1", 80), "set_debug": (True,),
                "get_debug": (), "time": (), "is_running": (), "stop": (),
                "remove_reader": (a,), "shutdown_asyncgens": (),
                "create_future": (),
            }[method]
            r = outcome(getattr(loop, method), *args)
            if r[0] == "ok":
                res = r[1]
                if asyncio.iscoroutine(res):
                    res.close()
                    r = ("ok", "coroutine")
                elif isinstance(res, asyncio.Future):
                    r = ("ok", "future")
                elif isinstance(res, (int, float)) and method == "time":
                    r = ("ok", "number")
            trace.append(r)
            c.close()
        finally:
            a.close()
            b.close()

    same(scenario)


def test_huge_and_infinite_delays_do_not_crash(same):
    def scenario(loop, trace):
        hs = [loop.call_later(d, trace.append, d)
              for d in (1e300, float("inf"), 10**12, 2**63)]
        hs.append(loop.call_at(float("inf"), print))
        hs.append(loop.call_at(1e300, print))
        loop.call_later(0.01, loop.stop)
        loop.run_forever()
        for h in hs:
            h.cancel()
        trace.append("ok")

    assert same(scenario) == ["ok"]


def test_huge_delay_only_timer_does_not_crash(same):
    # the only pending timer is far away: the poll timeout must be clamped
    def scenario(loop, trace):
        h = loop.call_later(1e300, print)
        t = threading.Timer(0.05, loop.call_soon_threadsafe, (loop.stop,))
        t.start()
        loop.run_forever()
        t.join()
        h.cancel()
        trace.append("ok")

    assert same(scenario) == ["ok"]


@pytest.mark.uvloop_differs("uvloop raises ValueError for nan")
@pytest.mark.parametrize("delay", ["nan", "str", "None", "complex"])
def test_bad_delay_types(loop, delay):
    # The standard loop accepts some garbage (call_at("1"), call_later(1j))
    # and only fails later; rejecting it up front with TypeError is fine.
    # What matters: no crash, and a rejection is a TypeError (Python 3.10's
    # TimerHandle asserts `when is not None` instead).
    d = {"nan": float("nan"), "str": "1", "None": None, "complex": 1j}[delay]
    for meth in (loop.call_later, loop.call_at):
        r = outcome(meth, d, print)
        if r[0] == "ok":
            r[1].cancel()
        else:
            assert r[0] == "TypeError" or (r[0] == "AssertionError" and d is None
                                           and sys.version_info < (3, 11)), r
    loop.close()


def test_non_callable_in_non_debug_mode(same):
    def scenario(loop, trace):
        loop.set_exception_handler(lambda lp, ctx: trace.append(
            (ctx["message"].split(" ")[:3],
             type(ctx.get("exception")).__name__)))
        r = outcome(loop.call_soon, 42)
        trace.append(r[0])
        loop.call_soon(loop.stop)
        loop.run_forever()

    same(scenario)


@pytest.mark.uvloop_differs("uvloop's methods are named Loop.*")
def test_bad_call_messages(same):
    # A wrong call names the method as asyncio's class does ("BaseEventLoop.
    # call_soon() got an unexpected keyword argument 'x'"). Methods that take
    # no arguments are left out: a Rust method's "takes no arguments (1
    # given)" differs in wording, not in type.
    def scenario(loop, trace):
        calls = [
            lambda: loop.call_soon(print, x=1), lambda: loop.call_soon(),
            lambda: loop.call_soon(print, context=None, x=1),
            lambda: loop.call_soon_threadsafe(), lambda: loop.call_soon_threadsafe(print, x=1),
            lambda: loop.call_later(1), lambda: loop.call_at(), lambda: loop.call_later(1, print, x=1),
            lambda: loop.create_task(), lambda: loop.create_task(None, x=1),
            lambda: loop.sock_recv(), lambda: loop.sock_recv_into(None), lambda: loop.sock_sendall(),
            lambda: loop.getaddrinfo(), lambda: loop.getaddrinfo("h", 1, x=1),
            lambda: loop.run_forever(1), lambda: loop.close(1), lambda: loop.start_tls(),
        ]
        for call in calls:
            trace.append(outcome(call))

    same(scenario)


def test_fd_out_of_range(same):
    def scenario(loop, trace):
        for fd in (10**6, 2**31, 2**40):
            r = outcome(loop.add_reader, fd, print)
            trace.append(r[0])
            trace.append(outcome(loop.remove_reader, fd)[0])

    same(scenario)


@pytest.mark.uvloop_differs("uvloop does not warn about unclosed loops")
def test_unclosed_loop_resource_warning(factories):
    results = {}
    for name, factory in factories.items():
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            lp = factory()
            del lp
            gc.collect()
        results[name] = [x.category.__name__ for x in w]
    assert results["ferroloop"] == results["asyncio"] == ["ResourceWarning"]


def test_loop_garbage_collected_while_callbacks_pending(factories):
    for factory in factories.values():
        lp = factory()
        lp.call_soon(print)
        lp.call_later(100, print)
        lp.close()
        del lp
        gc.collect()


@pytest.mark.uvloop_differs("uvloop differs")
def test_reentrant_stop_close_sequences(same):
    def scenario(loop, trace):
        loop.stop()
        loop.stop()
        loop.run_forever()
        loop.stop()
        loop.close()
        trace.append(exc_outcome(loop.stop))
        trace.append(loop.is_running())

    same(scenario)


def test_callback_raising_in_run_until_complete_does_not_break_loop(same):
    def scenario(loop, trace):
        loop.set_exception_handler(lambda lp, ctx: trace.append("handled"))

        async def main():
            loop.call_soon(lambda: 1 / 0)
            await asyncio.sleep(0.001)
            return "ok"
        trace.append(loop.run_until_complete(main()))

    assert same(scenario) == ["handled", "ok"]


def test_abuse_in_subprocess_does_not_crash(impl):
    # hard misuse in an isolated interpreter: the process must survive and
    # exit normally (no abort/segfault)
    r = run_python("""
        import asyncio, gc, os, socket, sys
        IMPL_IMPORT
        loop = impl.new_event_loop()
        # closing fds under a registered reader
        a, b = socket.socketpair()
        loop.add_reader(a.fileno(), lambda: None)
        a.close(); b.close()
        loop.run_until_complete(asyncio.sleep(0.01))
        try:
            loop.remove_reader(a)
        except Exception:
            pass
        # callback that stops and closes from inside
        def cb():
            loop.stop()
            try:
                loop.close()
            except RuntimeError:
                pass
        loop.call_soon(cb)
        loop.run_forever()
        # deep recursion inside callback
        def rec(n):
            return rec(n + 1)
        loop.set_exception_handler(lambda l, c: None)
        loop.call_soon(rec, 0)
        loop.call_soon(loop.stop)
        loop.run_forever()
        loop.close()
        loop.close()
        del loop
        gc.collect()
        print("survived")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "survived"


def test_close_after_refused_nested_run_forever(impl):
    # A callback's nested run_forever() is refused; on 3.13 asyncio's own
    # cleanup then makes the loop look stopped. close() from that callback
    # must raise, never wait on the iteration that runs it.
    loop = impl.new_event_loop()
    seen = []

    def callback():
        seen.append(outcome(loop.run_forever))
        seen.append(outcome(loop.close))
        loop.stop()
    loop.call_soon(callback)
    loop.call_later(5, loop.stop)
    loop.run_forever()
    loop.close()
    assert seen == [("RuntimeError", "This event loop is already running"),
                    ("RuntimeError", "Cannot close a running event loop")]
    assert loop.is_closed()
