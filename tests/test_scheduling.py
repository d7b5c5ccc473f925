"""Scheduling core: call_soon / call_later / call_at, handles, stop, run_*."""

import asyncio
import contextvars
import re
import sys

import pytest

from conftest import shown_args, exc_outcome, outcome


# ---------------------------------------------------------------- ordering

def test_call_soon_fifo(same):
    def scenario(loop, trace):
        for i in range(50):
            loop.call_soon(trace.append, i)
        loop.call_soon(loop.stop)
        loop.run_forever()

    assert same(scenario) == list(range(50))


def test_call_soon_from_callbacks_runs_next_iteration(same):
    def scenario(loop, trace):
        def cb(name, depth):
            trace.append(name)
            if depth:
                loop.call_soon(cb, name + "'", depth - 1)

        loop.call_soon(cb, "a", 2)
        loop.call_soon(cb, "b", 2)
        loop.call_soon(cb, "c", 0)
        loop.call_later(0.05, loop.stop)
        loop.run_forever()

    assert same(scenario) == ["a", "b", "c", "a'", "b'", "a''", "b''"]


@pytest.mark.uvloop_differs("uvloop rounds delays to ms; -1 and 0 tie")
def test_call_later_ordered_by_deadline(same):
    def scenario(loop, trace):
        for d, name in [(0.030, "c"), (0.010, "a"), (0.020, "b"),
                        (0.0, "zero"), (-1, "neg")]:
            loop.call_later(d, trace.append, name)
        loop.call_later(0.05, loop.stop)
        loop.run_forever()

    assert same(scenario) == ["neg", "zero", "a", "b", "c"]


def test_call_at_ordered_by_deadline(same):
    def scenario(loop, trace):
        now = loop.time()
        for off, name in [(0.03, "c"), (-5, "past"), (0.01, "a"),
                          (0.02, "b")]:
            loop.call_at(now + off, trace.append, name)
        loop.call_at(now + 0.05, loop.stop)
        loop.run_forever()

    assert same(scenario) == ["past", "a", "b", "c"]


def test_call_later_zero_in_sequence_is_fifo(same):
    # loop.time() is the real monotonic clock in the standard loop, so
    # successive call_later(0) calls get strictly increasing deadlines.
    def scenario(loop, trace):
        for i in range(20):
            loop.call_later(0, trace.append, i)
        loop.call_later(0.02, loop.stop)
        loop.run_forever()

    assert same(scenario) == list(range(20))


@pytest.mark.uvloop_differs("uvloop runs due timers before ready callbacks")
def test_timers_run_after_ready_callbacks(same):
    def scenario(loop, trace):
        loop.call_later(-1, trace.append, "timer")
        loop.call_soon(trace.append, "soon")
        loop.call_later(0.02, loop.stop)
        loop.run_forever()

    assert same(scenario) == ["soon", "timer"]


def test_cancelled_handles_are_skipped(same):
    def scenario(loop, trace):
        h1 = loop.call_soon(trace.append, "h1")
        loop.call_soon(trace.append, "h2")
        t1 = loop.call_later(0.001, trace.append, "t1")
        loop.call_later(0.002, trace.append, "t2")
        t3 = loop.call_later(3600, trace.append, "t3")
        h1.cancel()
        t1.cancel()
        t3.cancel()
        later = [None]

        def cancel_later():
            trace.append("canceller")
            later[0].cancel()
        loop.call_soon(cancel_later)
        later[0] = loop.call_soon(trace.append, "cancelled-from-callback")
        loop.call_later(0.03, loop.stop)
        loop.run_forever()
        trace.append((h1.cancelled(), t1.cancelled(), later[0].cancelled()))

    assert same(scenario) == ["h2", "canceller", "t2", (True, True, True)]


# ---------------------------------------------------------------- handles

@pytest.mark.uvloop_differs("uvloop returns Handle for call_later(0)")
def test_handle_types(loop):
    h = loop.call_soon(lambda: None)
    assert type(h).__name__ == "Handle"
    t0 = loop.call_later(0, lambda: None)
    assert type(t0).__name__ == "TimerHandle"
    assert type(loop.call_at(loop.time(), lambda: None)).__name__ == \
        "TimerHandle"
    assert isinstance(t0.when(), float)


def test_timerhandle_when(loop):
    now = loop.time()
    t = loop.call_at(now + 12.5, lambda: None)
    assert t.when() == now + 12.5
    t2 = loop.call_later(10, lambda: None)
    assert now + 10 <= t2.when() <= loop.time() + 10
    t.cancel()
    t2.cancel()


def test_handles_are_weakly_referenceable(same):
    """asyncio's handles take weak references (uvloop's tests keep them in
    a WeakValueDictionary); a reference dies with its handle."""
    import weakref

    def scenario(loop, trace):
        refs = weakref.WeakValueDictionary()
        makers = {"call_soon": lambda: loop.call_soon(trace.append, "soon"),
                  "call_soon_threadsafe": lambda: loop.call_soon_threadsafe(trace.append, "threadsafe"),
                  "call_later": lambda: loop.call_later(0, trace.append, "later"),
                  "call_at": lambda: loop.call_at(loop.time(), trace.append, "at")}
        for name, make in makers.items():
            handle = make()
            refs[name] = handle
            trace.append((name, refs[name] is handle))
            del handle
        kept = loop.call_later(3600, trace.append, "kept")
        refs["kept"] = kept
        for _ in range(3):
            loop.call_soon(loop.stop)
            loop.run_forever()
        trace.append(sorted(refs.keys()))
        kept.cancel()
    same(scenario)


def test_handle_cancel_api(loop):
    h = loop.call_soon(lambda: None)
    assert h.cancelled() is False
    assert h.cancel() is None
    assert h.cancelled() is True
    h.cancel()  # idempotent
    assert h.cancelled() is True
    t = loop.call_later(10, lambda: None)
    assert t.cancelled() is False
    t.cancel()
    assert t.cancelled() is True


def test_handle_get_context_only_where_asyncio_has_it(same):
    def scenario(loop, trace):
        h, t = loop.call_soon(print), loop.call_later(1, print)
        trace.append((hasattr(h, "get_context"), hasattr(t, "get_context")))
        h.cancel()
        t.cancel()

    assert same(scenario) == [(sys.version_info >= (3, 12),) * 2]


@pytest.mark.skipif(sys.version_info < (3, 12),
                    reason="Handle.get_context() is new in 3.12")
@pytest.mark.uvloop_differs("uvloop handles lack get_context")
def test_handle_get_context(loop):
    ctx = contextvars.copy_context()
    h = loop.call_soon(lambda: None, context=ctx)
    t = loop.call_later(1, lambda: None, context=ctx)
    assert h.get_context() is ctx
    assert t.get_context() is ctx
    h2 = loop.call_soon(lambda: None)
    assert isinstance(h2.get_context(), contextvars.Context)
    t.cancel()


def _cb_for_repr(a, b):
    pass


def _normalize_reprs(trace):
    return [re.sub(r"when=[0-9.e+-]+", "when=X", s) for s in trace]


@pytest.mark.uvloop_differs("uvloop handle repr differs")
def test_handle_repr_same_as_stdlib(same):
    def scenario(loop, trace):
        h = loop.call_soon(_cb_for_repr, 1, "x")
        t = loop.call_later(10, _cb_for_repr, 2, b"y")
        a = loop.call_at(loop.time() + 5, print)
        trace.extend([repr(h), repr(t), repr(a)])
        h.cancel()
        t.cancel()
        trace.extend([repr(h), repr(t)])

    trace = same(scenario, normalize=_normalize_reprs)
    assert trace[0].startswith("<Handle _cb_for_repr" + shown_args("(1, 'x')") + " at ")
    assert trace[1].startswith("<TimerHandle when=")
    assert trace[3].startswith("<Handle cancelled")


@pytest.mark.uvloop_differs("uvloop handle repr differs")
def test_handle_repr_shape(loop):
    h = loop.call_soon(_cb_for_repr, 1, 2)
    assert re.match(r"^<Handle _cb_for_repr" + re.escape(shown_args("(1, 2)")) + r" at .*test_scheduling"
                    r"\.py:\d+>$", repr(h)), repr(h)
    t = loop.call_later(10, _cb_for_repr, 1, 2)
    assert re.match(r"^<TimerHandle when=[0-9.]+ _cb_for_repr" + re.escape(shown_args("(1, 2)")) + r" at .*"
                    r":\d+>$", repr(t)), repr(t)
    t.cancel()


# ---------------------------------------------------------------- contexts

VAR = contextvars.ContextVar("VAR", default="default")


@pytest.mark.uvloop_differs("uvloop runs timers/threadsafe in other order")
def test_context_argument_honoured(same):
    def scenario(loop, trace):
        ctx = contextvars.copy_context()
        ctx.run(VAR.set, "in-ctx")

        def cb(tag):
            trace.append((tag, VAR.get()))
            VAR.set("mutated-" + tag)

        loop.call_soon(cb, "soon", context=ctx)
        loop.call_later(0, cb, "later", context=ctx)
        loop.call_at(loop.time(), cb, "at", context=ctx)
        loop.call_soon_threadsafe(cb, "threadsafe", context=ctx)
        loop.call_soon(cb, "no-ctx")
        loop.call_later(0.02, loop.stop)
        loop.run_forever()
        trace.append(("outer", VAR.get()))
        trace.append(("ctx", ctx[VAR]))

    assert same(scenario) == [
        ("soon", "in-ctx"), ("threadsafe", "mutated-soon"),
        ("no-ctx", "default"), ("later", "mutated-threadsafe"),
        ("at", "mutated-later"), ("outer", "default"), ("ctx", "mutated-at")]


def test_callbacks_without_context_get_a_copy(same):
    def scenario(loop, trace):
        VAR.set("outer-value")
        try:
            def cb():
                trace.append(VAR.get())
                VAR.set("changed")
            loop.call_soon(cb)
            loop.call_soon(cb)
            loop.call_soon(loop.stop)
            loop.run_forever()
            trace.append(VAR.get())
        finally:
            VAR.set("default")

    assert same(scenario) == ["outer-value", "outer-value", "outer-value"]


# ---------------------------------------------------------------- stop()

@pytest.mark.uvloop_differs("uvloop stop() semantics differ")
def test_stop_runs_already_scheduled_callbacks_only(same):
    def scenario(loop, trace):
        def a():
            trace.append("a")
            loop.stop()
            loop.call_soon(trace.append, "b-scheduled-after-stop")

        loop.call_soon(a)
        loop.call_soon(trace.append, "c-scheduled-before-stop")
        loop.run_forever()
        trace.append("returned")
        loop.call_soon(loop.stop)
        loop.run_forever()
        trace.append("returned-2")

    assert same(scenario) == ["a", "c-scheduled-before-stop", "returned",
                              "b-scheduled-after-stop", "returned-2"]


def test_stop_before_run_forever_runs_one_iteration(same):
    def scenario(loop, trace):
        loop.call_soon(trace.append, 1)
        loop.call_later(-1, trace.append, "due-timer")
        loop.call_later(3600, trace.append, "future-timer")
        loop.stop()
        loop.run_forever()
        trace.append(("running", loop.is_running()))

    assert same(scenario) == [1, "due-timer", ("running", False)]


def test_stop_twice_is_harmless(same):
    def scenario(loop, trace):
        loop.call_soon(loop.stop)
        loop.call_soon(loop.stop)
        loop.call_soon(trace.append, "x")
        loop.run_forever()
        loop.call_soon(trace.append, "y")
        loop.call_soon(loop.stop)
        loop.run_forever()

    assert same(scenario) == ["x", "y"]


def test_is_running_inside_and_outside(same):
    def scenario(loop, trace):
        trace.append(loop.is_running())

        def cb():
            trace.append(loop.is_running())
            trace.append(asyncio.get_running_loop() is loop)
            loop.stop()
        loop.call_soon(cb)
        loop.run_forever()
        trace.append(loop.is_running())
        trace.append(asyncio._get_running_loop() is None)

    assert same(scenario) == [False, True, True, False, True]


# ------------------------------------------------------- run_until_complete

def test_run_until_complete_coroutine(same):
    def scenario(loop, trace):
        async def coro(x):
            await asyncio.sleep(0)
            return x * 2
        trace.append(loop.run_until_complete(coro(21)))

    assert same(scenario) == [42]


def test_run_until_complete_future(same):
    def scenario(loop, trace):
        fut = loop.create_future()
        loop.call_later(0.005, fut.set_result, "done")
        trace.append(loop.run_until_complete(fut))
        trace.append(loop.run_until_complete(fut))  # already done

    assert same(scenario) == ["done", "done"]


def test_run_until_complete_exception_propagates(same):
    def scenario(loop, trace):
        async def boom():
            raise KeyError("k")
        trace.append(exc_outcome(loop.run_until_complete, boom()))
        fut = loop.create_future()
        loop.call_soon(fut.set_exception, ValueError("v"))
        trace.append(exc_outcome(loop.run_until_complete, fut))
        fut2 = loop.create_future()
        loop.call_soon(fut2.cancel)
        trace.append(exc_outcome(loop.run_until_complete, fut2)[0])

    assert same(scenario) == [("KeyError", "'k'"), ("ValueError", "v"),
                              "CancelledError"]


def test_run_until_complete_awaitable_object(same):
    class Awaitable:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return "awaited"

    def scenario(loop, trace):
        trace.append(loop.run_until_complete(Awaitable()))

    assert same(scenario) == ["awaited"]


def test_run_until_complete_rejects_non_awaitable(same):
    def scenario(loop, trace):
        trace.append(exc_outcome(loop.run_until_complete, 42))
        trace.append(exc_outcome(loop.run_until_complete, lambda: None))

    t = same(scenario)
    assert t[0][0] == "TypeError"


def test_run_until_complete_loop_stopped_before_done(same):
    def scenario(loop, trace):
        fut = loop.create_future()
        loop.call_soon(loop.stop)
        trace.append(exc_outcome(loop.run_until_complete, fut))

    assert same(scenario) == [
        ("RuntimeError", "Event loop stopped before Future completed.")]


def test_run_until_complete_is_not_disturbed_by_stop_state(same):
    def scenario(loop, trace):
        async def coro():
            await asyncio.sleep(0.001)
            return "ok"
        trace.append(loop.run_until_complete(coro()))
        trace.append(loop.run_until_complete(coro()))

    assert same(scenario) == ["ok", "ok"]


# ---------------------------------------------------------------- nesting

@pytest.mark.uvloop_differs("uvloop error message differs")
def test_nested_run_raises_same_error(same):
    def scenario(loop, trace):
        async def inner():
            return 1

        def cb():
            c = inner()
            trace.append(exc_outcome(loop.run_until_complete, c))
            c.close()
            trace.append(exc_outcome(loop.run_forever))
            loop.stop()

        loop.call_soon(cb)
        loop.run_forever()

    t = same(scenario)
    assert t == [("RuntimeError", "This event loop is already running")] * 2


def test_running_another_loop_inside_loop_raises(factories):
    results = {}
    for name, factory in factories.items():
        outer = factory()
        other = factory()
        res = []

        def cb():
            res.append(exc_outcome(other.run_forever))
            outer.stop()

        outer.call_soon(cb)
        outer.run_forever()
        outer.close()
        other.close()
        results[name] = res
    assert results["ferroloop"] == results["asyncio"] == [
        ("RuntimeError",
         "Cannot run the event loop while another loop is running")]


# ---------------------------------------------------------------- closed

@pytest.mark.parametrize("op", [
    "call_soon", "call_later", "call_at", "call_soon_threadsafe",
    "run_forever", "run_until_complete_future", "run_until_complete_coro",
    "create_task",
])
def test_closed_loop_raises(same, op):
    def scenario(loop, trace):
        loop.close()
        loop.close()  # idempotent
        trace.append(loop.is_closed())
        f = lambda: None  # noqa: E731
        if op == "call_soon":
            r = exc_outcome(loop.call_soon, f)
        elif op == "call_later":
            r = exc_outcome(loop.call_later, 1, f)
        elif op == "call_at":
            r = exc_outcome(loop.call_at, 1, f)
        elif op == "call_soon_threadsafe":
            r = exc_outcome(loop.call_soon_threadsafe, f)
        elif op == "run_forever":
            r = exc_outcome(loop.run_forever)
        elif op == "run_until_complete_future":
            r = exc_outcome(loop.run_until_complete, loop.create_future())
        elif op == "run_until_complete_coro":
            c = asyncio.sleep(0)
            r = exc_outcome(loop.run_until_complete, c)
            c.close()
        elif op == "create_task":
            c = asyncio.sleep(0)
            r = exc_outcome(loop.create_task, c)
            c.close()
        trace.append(r)

    assert same(scenario) == [True, ("RuntimeError", "Event loop is closed")]


# ------------------------------------------------------- callback checking

@pytest.mark.uvloop_differs("uvloop does not check callbacks")
@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at",
                                    "call_soon_threadsafe"])
@pytest.mark.parametrize("bad", ["coroutine", "coroutine_function", "int"])
def test_bad_callback_in_debug_mode(same, method, bad):
    async def coro_fn():
        pass

    def scenario(loop, trace):
        cb = {"coroutine": None, "coroutine_function": coro_fn,
              "int": 1}[bad]
        c = None
        if bad == "coroutine":
            cb = c = coro_fn()
        args = {"call_soon": (), "call_soon_threadsafe": (),
                "call_later": (10,), "call_at": (loop.time() + 10,)}[method]
        trace.append(exc_outcome(getattr(loop, method), *args, cb))
        if c is not None:
            c.close()

    t = same(scenario, debug=True)
    assert t[0][0] == "TypeError"


def test_time_is_monotonic_clock(loop):
    import time
    a = time.monotonic()
    b = loop.time()
    c = time.monotonic()
    assert a - 0.01 <= b <= c + 0.01


@pytest.mark.uvloop_differs("uvloop message differs")
def test_call_later_delay_none_rejected(same):
    def scenario(loop, trace):
        trace.append(exc_outcome(loop.call_later, None, print))
        trace.append(outcome(loop.call_later, "x", print)[0])

    assert same(scenario)[1] == "TypeError"


# ---------------------------------------------------------------- the clock

def test_call_at_keeps_the_deadline_as_given(same):
    """asyncio keeps `when` as passed: an int deadline stays an int in
    when()/_when and hashes like it; int and float deadlines interleave."""
    def scenario(loop, trace):
        now = int(loop.time())
        handles = [loop.call_at(now + 2, trace.append, "int+2"),
                   loop.call_at(now + 1.5, trace.append, "float+1.5"),
                   loop.call_at(now + 1, trace.append, "int+1"),
                   loop.call_at(float(now + 1), trace.append, "float+1")]
        trace.append([(type(h.when()).__name__, h.when() - now, type(h._when).__name__) for h in handles])
        trace.append(hash(handles[0]) == hash(now + 2))
        trace.append(type(loop.call_later(1, lambda: None).when()).__name__)
        loop.call_at(now + 2.5, loop.stop)
        loop.run_forever()
    same(scenario)


def test_replaced_time_drives_the_scheduler(same):
    """mock.patch.object(loop, "time") moves the loop's clock (aiohttp's
    tests jump time this way): call_later counts from it and due timers run;
    once the patch is undone the real clock is back."""
    from unittest import mock

    async def scenario(loop, trace):
        now = loop.time()
        with mock.patch.object(loop, "time") as fake:
            fake.return_value = now
            # (jumps stay below the harness's 20 s wait_for deadline)
            late = loop.call_at(now + 5, trace.append, "at+5")
            later = loop.call_later(8, trace.append, "later+8")
            trace.append(later.when() == now + 8)
            fake.return_value = now + 6
            for _ in range(3):
                await asyncio.sleep(0)
            trace.append(("after jump", late.cancelled()))
            fake.return_value = 7  # an int clock
            trace.append(type(loop.call_later(1, lambda: None).when()).__name__)
        later.cancel()
        t0 = loop.time()
        await asyncio.sleep(0.01)
        trace.append(0.005 < loop.time() - t0 < 5)
    same(scenario)


def test_loop_subclass_with_its_own_clock(factories):
    """A loop subclass whose time() runs ahead: timers are due on its clock."""
    results = {}
    for name, factory in factories.items():
        probe = factory()
        base = type(probe)
        probe.close()

        class AheadLoop(base):
            def time(self):
                return super().time() + self.offset

        loop = AheadLoop()
        loop.offset = 0.0
        fired = []
        try:
            loop.call_later(3600, fired.append, "hour")
            loop.offset = 7200.0
            loop.call_soon(loop.stop)
            loop.run_forever()
            loop.call_soon(loop.stop)
            loop.run_forever()
        finally:
            loop.close()
        results[name] = fired
    assert results["ferroloop"] == results["asyncio"] == ["hour"]
