"""Debug mode: get/set_debug, slow callbacks, env var, thread checks."""

import asyncio
import logging
import re
import threading
import time

import pytest

from conftest import capture_log, exc_outcome, run_python


def test_debug_default_off_and_toggle(same):
    def scenario(loop, trace):
        trace.append(loop.get_debug())
        loop.set_debug(True)
        trace.append(loop.get_debug())
        loop.set_debug(False)
        trace.append(loop.get_debug())
        trace.append(loop.slow_callback_duration)
        loop.slow_callback_duration = 0.25
        trace.append(loop.slow_callback_duration)

    # run_on() calls set_debug(False) first; check the real default too
    assert same(scenario) == [False, True, False, 0.1, 0.25]


def test_set_debug_takes_any_truth_value(same):
    """asyncio stores what set_debug gets (aiohttp's tests pass 0/1):
    get_debug() returns it and its truth switches debug mode."""
    def scenario(loop, trace):
        for value in (1, 0, "yes", None):
            loop.set_debug(value)
            handle = loop.call_soon(lambda: None)
            trace.append((repr(loop.get_debug()), repr(loop._debug), handle._source_traceback is not None))
            handle.cancel()

    same(scenario)


def test_new_loop_debug_default_false(impl):
    lp = impl.new_event_loop()
    try:
        assert lp.get_debug() is False
    finally:
        lp.close()


def _slow_cb():
    time.sleep(0.06)


def _norm_slow(trace):
    out = []
    for lvl, msg, exc in trace:
        msg = re.sub(r"took \d+\.\d{3} seconds", "took N seconds", msg)
        out.append((lvl, msg, exc))
    return out


@pytest.mark.uvloop_differs("uvloop slow-callback message differs")
def test_slow_callback_warning(same):
    def scenario(loop, trace):
        loop.slow_callback_duration = 0.02
        with capture_log() as cap:
            loop.call_soon(_slow_cb)
            loop.call_soon(lambda: None)
            loop.call_soon(loop.stop)
            loop.run_forever()
        trace.extend(cap.summary(logging.WARNING))

    t = same(scenario, debug=True, normalize=_norm_slow)
    assert len(t) == 1
    assert t[0][0] == "WARNING"
    assert re.match(r"^Executing <Handle _slow_cb\(\) at .*:\d+ created at "
                    r".*:\d+> took N seconds$", t[0][1]), t[0][1]


def test_slow_callback_warning_records_duration(loop):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.02
    with capture_log() as cap:
        loop.call_soon(_slow_cb)
        loop.call_soon(loop.stop)
        loop.run_forever()
    warns = [r for r in cap.records if r.levelno == logging.WARNING]
    assert len(warns) == 1
    m = re.search(r"took (\d+\.\d{3}) seconds", warns[0].getMessage())
    assert m and 0.05 <= float(m.group(1)) < 1.0


def test_no_slow_callback_warning_without_debug(loop):
    loop.slow_callback_duration = 0.01
    with capture_log() as cap:
        loop.call_soon(_slow_cb)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert [r for r in cap.records if r.levelno >= logging.WARNING] == []


@pytest.mark.uvloop_differs("uvloop slow-task message differs")
def test_slow_task_step_warning(same):
    def scenario(loop, trace):
        loop.slow_callback_duration = 0.02

        async def slow_task():
            time.sleep(0.05)

        with capture_log() as cap:
            loop.run_until_complete(slow_task())
        trace.extend(msg.split(" ")[0:2] for _, msg, _ in
                     cap.summary(logging.WARNING))

    assert same(scenario, debug=True) == [["Executing", "<Task"]]


@pytest.mark.parametrize("env,expected", [
    ({"PYTHONASYNCIODEBUG": "1"}, "True True"),
    ({}, "False False"),
])
def test_pythonasynciodebug_env(impl, env, expected):
    from conftest import child_env
    r = run_python("""
        IMPL_IMPORT
        import asyncio
        a = impl.new_event_loop()
        b = asyncio.SelectorEventLoop()
        print(a.get_debug(), b.get_debug())
        a.close(); b.close()
    """, env=child_env(**env))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == expected.split()


def test_dev_mode_enables_debug(impl):
    import subprocess
    import sys
    import textwrap
    from conftest import child_env
    code = textwrap.dedent(f"""
        {impl.import_line}
        a = impl.new_event_loop()
        print(a.get_debug())
        a.close()
    """)
    r = subprocess.run([sys.executable, "-X", "dev", "-c", code],
                       capture_output=True, text=True, env=child_env(),
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True"]


@pytest.mark.uvloop_differs("uvloop has no thread check in debug mode")
def test_debug_thread_check(same):
    def scenario(loop, trace):
        def from_thread():
            res = []
            t = threading.Thread(target=lambda: res.extend([
                exc_outcome(loop.call_soon, print),
                exc_outcome(loop.call_later, 1, print),
                exc_outcome(loop.call_at, loop.time() + 1, print),
            ]))
            t.start()
            t.join()
            trace.extend(res)
            loop.stop()

        # not running yet: no thread check
        t = threading.Thread(target=lambda: trace.append(
            exc_outcome(loop.call_soon, lambda: None)))
        t.start()
        t.join()
        loop.call_soon(from_thread)
        loop.run_forever()

    msg = ("Non-thread-safe operation invoked on an event loop other than "
           "the current one")
    assert same(scenario, debug=True) == [("ok",)] + [("RuntimeError", msg)] * 3


@pytest.mark.uvloop_differs("uvloop handle repr differs")
def test_debug_handle_repr_has_source(same):
    def scenario(loop, trace):
        h = loop.call_soon(_slow_cb)
        trace.append(re.sub(r":\d+", ":N", repr(h)))
        h.cancel()

    t = same(scenario, debug=True)
    assert re.match(r"^<Handle _slow_cb\(\) at .*:N created at .*:N>$",
                    t[0]), t[0]


def test_debug_exception_context_has_source_traceback(same):
    def scenario(loop, trace):
        loop.set_exception_handler(
            lambda lp, ctx: trace.append(sorted(ctx)))
        loop.call_soon(_raise)
        loop.call_soon(loop.stop)
        loop.run_forever()

    assert same(scenario, debug=True) == [
        ["exception", "handle", "message", "source_traceback"]]


def _raise():
    raise ValueError("x")


def test_set_debug_while_running(same):
    def scenario(loop, trace):
        def cb():
            loop.set_debug(True)
            trace.append(loop.get_debug())
            loop.stop()
        loop.call_soon(cb)
        loop.run_forever()
        trace.append(loop.get_debug())

    assert same(scenario) == [True, True]
