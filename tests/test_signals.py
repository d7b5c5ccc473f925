"""add_signal_handler / remove_signal_handler and Ctrl-C behaviour."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import child_env, exc_outcome

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX only")


@pytest.mark.uvloop_differs("uvloop signal handling differs when not running inside run_forever")
def test_signal_handler_runs(loop):
    got = []
    fut = loop.create_future()

    def handler(*args):
        got.append((args, asyncio.get_running_loop() is loop))
        if not fut.done():
            fut.set_result(None)

    loop.add_signal_handler(signal.SIGUSR1, handler, "a", 2)
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        loop.run_until_complete(asyncio.wait_for(fut, 5))
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert got == [(("a", 2), True)]


def test_signal_wakes_sleeping_loop(loop):
    fut = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR2, lambda: fut.set_result(
        time.monotonic()))
    try:
        def sender():
            time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGUSR2)
        sent = time.monotonic() + 0.1
        t = threading.Thread(target=sender)
        t.start()
        got = loop.run_until_complete(asyncio.wait_for(fut, 5))
        t.join()
        assert got - sent < 0.3
    finally:
        loop.remove_signal_handler(signal.SIGUSR2)


@pytest.mark.uvloop_differs("uvloop signal handling differs when not running inside run_forever")
def test_signal_handler_replaced(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR1, got.append, "first")
    loop.add_signal_handler(signal.SIGUSR1, got.append, "second")
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        loop.run_until_complete(asyncio.sleep(0.05))
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert got == ["second"]


@pytest.mark.uvloop_differs("uvloop signal handling differs when not running inside run_forever")
def test_remove_signal_handler_return_values_and_restore(same):
    def scenario(loop, trace):
        trace.append(loop.remove_signal_handler(signal.SIGUSR1))
        loop.add_signal_handler(signal.SIGUSR1, print)
        trace.append(signal.getsignal(signal.SIGUSR1) not in
                     (signal.SIG_DFL, signal.SIG_IGN, None))
        trace.append(loop.remove_signal_handler(signal.SIGUSR1))
        trace.append(loop.remove_signal_handler(signal.SIGUSR1))
        trace.append(signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL)

        loop.add_signal_handler(signal.SIGINT, print)
        trace.append(loop.remove_signal_handler(signal.SIGINT))
        trace.append(signal.getsignal(signal.SIGINT) is
                     signal.default_int_handler)

    assert same(scenario) == [False, True, True, False, True, True, True]


@pytest.mark.uvloop_differs("uvloop signal handling differs when not running inside run_forever")
def test_close_removes_signal_handlers(same):
    def scenario(loop, trace):
        loop.add_signal_handler(signal.SIGUSR1, print)
        loop.add_signal_handler(signal.SIGUSR2, print)
        loop.close()
        trace.append(signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL)
        trace.append(signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL)
        trace.append(signal.set_wakeup_fd(-1))  # -1: loop released it

    assert same(scenario) == [True, True, -1]


BAD_SIGNALS = [
    ("not-int", "SIGUSR1"),
    ("zero", 0),
    ("negative", -1),
    ("too-big", 10_000),
    ("float", 1.5),
    ("SIGKILL", signal.SIGKILL),
    ("SIGSTOP", signal.SIGSTOP),
]


@pytest.mark.uvloop_differs("uvloop messages differ")
@pytest.mark.parametrize("method", ["add_signal_handler",
                                    "remove_signal_handler"])
@pytest.mark.parametrize("name,sig", BAD_SIGNALS, ids=[n for n, _ in
                                                        BAD_SIGNALS])
def test_invalid_signals_same_errors(same, method, name, sig):
    def scenario(loop, trace):
        args = (sig, print) if method == "add_signal_handler" else (sig,)
        trace.append(exc_outcome(getattr(loop, method), *args))

    same(scenario)


@pytest.mark.uvloop_differs("uvloop messages differ")
def test_sigkill_message(same):
    def scenario(loop, trace):
        trace.append(exc_outcome(loop.add_signal_handler, signal.SIGKILL,
                                 print))

    assert same(scenario) == [("RuntimeError",
                               f"sig {int(signal.SIGKILL)} cannot be caught")]


@pytest.mark.uvloop_differs("uvloop does not reject coroutines")
def test_coroutine_handler_rejected(same):
    async def coro_fn():
        pass

    def scenario(loop, trace):
        trace.append(exc_outcome(loop.add_signal_handler, signal.SIGUSR1,
                                 coro_fn))
        c = coro_fn()
        trace.append(exc_outcome(loop.add_signal_handler, signal.SIGUSR1, c))
        c.close()
        trace.append(loop.remove_signal_handler(signal.SIGUSR1))

    assert same(scenario) == [
        ("TypeError", "coroutines cannot be used with add_signal_handler()")
    ] * 2 + [False]


@pytest.mark.uvloop_differs("uvloop messages differ")
def test_add_signal_handler_from_non_main_thread(same):
    def scenario(loop, trace):
        res = []

        def other():
            res.append(exc_outcome(loop.add_signal_handler, signal.SIGUSR1,
                                   print))
        t = threading.Thread(target=other)
        t.start()
        t.join()
        trace.extend(res)
        trace.append(signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL)

    t = same(scenario)
    assert t[0][0] == "RuntimeError"


def test_add_signal_handler_on_closed_loop(same):
    def scenario(loop, trace):
        loop.close()
        trace.append(exc_outcome(loop.add_signal_handler, signal.SIGUSR1,
                                 print))

    assert same(scenario) == [("RuntimeError", "Event loop is closed")]


@pytest.mark.uvloop_differs("uvloop signal handling differs when not running inside run_forever")
def test_signal_handler_exception_goes_to_exception_handler(loop):
    seen = []
    fut = loop.create_future()

    def bad():
        raise ValueError("in signal handler")

    loop.set_exception_handler(lambda lp, ctx: (
        seen.append(type(ctx.get("exception")).__name__),
        fut.done() or fut.set_result(None)))
    loop.add_signal_handler(signal.SIGUSR1, bad)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        loop.run_until_complete(asyncio.wait_for(fut, 5))
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert seen == ["ValueError"]


# --------------------------------------------------------------- Ctrl-C

CTRL_C_SCRIPT = """
import asyncio, sys
IMPL_IMPORT_OR_ASYNCIO

async def main():
    print("ready", flush=True)
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        print("cancelled", flush=True)
        raise

RUN(main())
"""


def _ctrl_c(impl, which):
    if which == "ferroloop":
        code = CTRL_C_SCRIPT.replace("IMPL_IMPORT_OR_ASYNCIO",
                                     impl.import_line)
        code = code.replace("RUN(", "impl.run(")
    else:
        code = CTRL_C_SCRIPT.replace("IMPL_IMPORT_OR_ASYNCIO", "")
        code = code.replace("RUN(", "asyncio.run(")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        line = p.stdout.readline()
        assert line.strip() == "ready", p.stderr.read()
        time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=15)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, out, err


def test_ctrl_c_like_asyncio_run(impl):
    rc, out, err = _ctrl_c(impl, "ferroloop")
    rc_std, out_std, err_std = _ctrl_c(impl, "asyncio")
    assert rc == rc_std, (err, err_std)
    assert out.split() == out_std.split() == ["cancelled"]
    assert err.strip().splitlines()[-1] == err_std.strip().splitlines()[-1] \
        == "KeyboardInterrupt"
    assert "Traceback (most recent call last)" in err
