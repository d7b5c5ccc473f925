"""Hypothesis-driven differential fuzzing of the loop core.

Random programs of scheduling calls, handle methods, futures and tasks run on
ferroloop and on the standard loop (asyncio.SelectorEventLoop); the traces
must be equal: which callback ran in which order and in which context, what
each call returned or raised, what went to the exception handler and to the
asyncio logger, what escaped run_forever / run_until_complete.
Properties: scheduling programs (call_soon, call_soon_threadsafe from the
loop's thread and from joined threads, call_later, call_at, cancel, stop,
re-entrant runs, exceptions, KeyboardInterrupt/SystemExit), the same in debug
mode, futures and tasks programs, and loop-API programs (debug flag, clock
facts, async generators, the default executor, close).

Determinism (no real time value is ever compared):
  * Most deadlines are due when scheduled: delay 0 or negative, call_at in a
    band far in the past (T0 - 100 + p, p small, so equal deadlines are
    frequent); their order depends only on `when` and heapq's order.
  * Positive deadlines are on a grid: call_at(T0 + k * UNIT) with T0 read
    once, call_later((k + 1/2) * UNIT) only from the top level (scheduled
    within microseconds of T0). A callback in a chain started by the grid
    timer of slot s only schedules grid timers of slot >= s + 2, so a late
    loop (less than a slot) cannot reorder them; such programs are retried
    once, as a scheduling hiccup does not reproduce and a bug does.
  * Far (1e9 s), inf and nan deadlines never hold the run open; the run ends
    when every counted callback has run or was cancelled.
  * Other threads are started and joined inside a callback.
  * Slow-callback warnings are only recorded for the callback made to be slow.
  * Known differences (asyncio failing on its own state) are skipped by the
    programs and kept as strict xfails (test_known_differences); the
    ferroloop differences found, all fixed since, are pinned in
    test_found_differences.

Hunting: FUZZ_EXAMPLES=2000 FUZZ_RANDOM=1 FERROLOOP_TEST_TIMEOUT=3000.
"""

import asyncio
import contextvars
import gc
import logging
import math
import os
import re
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import IMPL, impl_factory, stdlib_factory

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0")) or None
SETTINGS = dict(deadline=None, derandomize=not os.environ.get("FUZZ_RANDOM"), print_blob=True,
                database=None, suppress_health_check=list(HealthCheck))
UNIT = 0.01          # grid of positive deadlines (seconds)
FAR = 1e9
PY312 = sys.version_info >= (3, 12)

VAR = contextvars.ContextVar("VAR", default="default")


def examples(n):
    return EXAMPLES or n


# ================================================================ tracing

_ADDR = re.compile(r" at 0x[0-9a-f]+")
_WHEN = re.compile(r"when=[^ >]+")
_TASKNAME = re.compile(r"Task-\d+")
_TOOK = re.compile(r"took [0-9.]+ seconds")
_CREATED = re.compile(r"Object created at \(most recent call last\):\n(  .*(\n|$))*")


def norm(text):
    """What legitimately differs between two runs: addresses, deadlines,
    measured durations."""
    text = _CREATED.sub("Object created at ...\n", str(text))
    text = _TASKNAME.sub("Task-N", _ADDR.sub(" at 0x", text))
    return _TOOK.sub("took X seconds", _WHEN.sub("when=X", text))


def outcome(fn, *args, **kwargs):
    try:
        r = fn(*args, **kwargs)
    except BaseException as e:  # noqa: B902
        return (type(e).__name__, norm(e))
    return ("ok", r)


def exc_name(e):
    return type(e).__name__ if e is not None else None


GC_MESSAGES = ("Task exception was never retrieved", "Future exception was never retrieved",
               "Task was destroyed but it is pending!")


def record_handler(loop, trace):
    def handler(lp, ctx):
        if ctx.get("message") in GC_MESSAGES:
            # reported when the object is collected: not at a fixed point
            # when it is in a reference cycle (run_trace collects and adds them)
            exc = ctx.get("exception")
            _GC_REPORTS.append(("gc report", ctx["message"], exc_name(exc), norm(exc) if exc else None))
            return
        exc = ctx.get("exception")
        h = ctx.get("handle")
        entry = ["handler", norm(ctx.get("message")), exc_name(exc), norm(exc) if exc else None,
                 tuple(sorted(ctx))]
        if h is not None:
            entry.append(norm(repr(h)))
        tb = ctx.get("source_traceback")
        if tb:
            entry.append(("tb", tb[-1].name, tb[-1].lineno))
        trace.append(tuple(entry))
    loop.set_exception_handler(handler)


class record_log(logging.Handler):
    """Warnings and errors of the asyncio logger go into the trace
    (slow-callback warnings only for callbacks named *_slow_*)."""

    def __init__(self, trace):
        super().__init__(logging.WARNING)
        self.trace = trace

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("Executing ") and "_slow_" not in msg:
            return
        self.trace.append(("log", record.levelname, norm(msg),
                           record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None))

    def __enter__(self):
        lg = logging.getLogger("asyncio")
        self.old = lg.level, lg.propagate
        lg.setLevel(logging.WARNING)
        lg.propagate = False   # (pytest's log capture would keep every record)
        lg.addHandler(self)
        return self

    def __exit__(self, *exc):
        lg = logging.getLogger("asyncio")
        lg.removeHandler(self)
        lg.setLevel(self.old[0])
        lg.propagate = self.old[1]


_GC_REPORTS = []


def run_trace(factory, scenario):
    # Older objects are frozen (cheap collections, no reports from earlier
    # runs); no automatic collection during the run: what is collected is
    # collected at the end, and its reports are added sorted.
    gc.freeze()
    enabled = gc.isenabled()
    gc.disable()
    del _GC_REPORTS[:]
    loop = factory()
    trace = []
    try:
        with record_log(trace):
            scenario(loop, trace)
    except BaseException as e:  # noqa: B902
        trace.append(("scenario raised", type(e).__name__, norm(e)))
    finally:
        if not loop.is_closed() and not loop.is_running():
            loop.close()
        del loop
        gc.collect()
        if enabled:
            gc.enable()
    trace.extend(sorted(_GC_REPORTS, key=repr))
    del _GC_REPORTS[:]
    return trace


def check_same(scenario, retry=False):
    """retry: the program's timers are due at set times (slots), which a
    loaded machine can reach late, on either loop: a difference is checked
    again, twice (a real one reproduces every time)."""
    expected = run_trace(stdlib_factory, scenario)
    got = run_trace(impl_factory, scenario)
    for _ in range(2 if retry else 0):
        if got == expected:
            break
        expected = run_trace(stdlib_factory, scenario)
        got = run_trace(impl_factory, scenario)
    assert got == expected, f"\nferroloop: {got!r}\nasyncio:   {expected!r}"
    return expected


# ============================================================ scheduling

# deadlines for "later" (relative) and "at" (absolute) ops
LATER_IMMEDIATE = [0, -0.5, -1, 0.0]
BAD_CALLS = ["later_none", "later_str", "later_hugeint", "at_none", "soon_int",
             "soon_badctx", "later_badctx", "at_bool", "soon_kw"]
NESTED = ["run_until_complete", "run_forever", "close", "stop_twice"]


def _leaf_ops():
    return st.one_of(
        st.tuples(st.just("cancel"), st.integers(0, 50), st.booleans()),
        st.tuples(st.just("cancel_self")),
        st.tuples(st.just("repr"), st.integers(0, 50)),
        st.tuples(st.just("ctx"), st.integers(0, 50)),
        st.tuples(st.just("bad"), st.sampled_from(BAD_CALLS)),
        st.tuples(st.just("nested"), st.sampled_from(NESTED)),
        st.tuples(st.just("stop")),
        st.tuples(st.just("raise"), st.sampled_from(["ZeroDivisionError", "ZeroDivisionError",
                                                      "KeyboardInterrupt", "SystemExit"])),
        st.tuples(st.just("time")),
    )


def _sched_ops(depth):
    children = st.just(()) if depth <= 0 else st.lists(_any_op(depth - 1), max_size=3).map(tuple)
    flags = st.tuples(st.sampled_from([None, None, 0, 1, 2]),   # context: none / ctx k
                      st.booleans())                           # self repr during run
    return st.one_of(
        st.tuples(st.just("soon"), flags, children),
        st.tuples(st.just("threadsafe"), flags, children),
        st.tuples(st.just("thread"), st.sampled_from(["threadsafe", "soon", "later", "at"]), flags, children),
        st.tuples(st.just("later"), st.sampled_from(LATER_IMMEDIATE), flags, children),
        st.tuples(st.just("later_slot"), st.integers(0, 4), flags, children),
        st.tuples(st.just("at_past"), st.integers(0, 2), flags, children),
        st.tuples(st.just("at_slot"), st.integers(0, 4), flags, children),
        st.tuples(st.just("at_odd"), st.sampled_from(["far", "inf", "-inf", "nan", "later_far",
                                                       "later_inf", "int_past", "frac_past",
                                                       "big_int", "big_int_less", "big_float"]),
                  flags, children),
    )


def _any_op(depth):
    return st.one_of(_sched_ops(depth), _leaf_ops())


PROGRAMS = st.lists(_any_op(2), min_size=1, max_size=8)

COUNTED = {"soon", "threadsafe", "thread", "later", "later_slot", "at_past", "at_slot"}


def set_debug(loop, debug):
    """Debug mode, with only the callbacks made to be slow warned about."""
    loop.set_debug(debug)
    if debug:
        loop.slow_callback_duration = 1000.0


def var_contexts(prefix, n):
    """n copies of the current context, VAR set to prefix0, prefix1, ..."""
    ctxs = []
    for k in range(n):
        c = contextvars.copy_context()
        c.run(VAR.set, f"{prefix}{k}")
        ctxs.append(c)
    return ctxs


def make_program(program, debug=False, handler=True, skip_known=True):
    """A scenario interpreting `program` (see the module docstring)."""

    def scenario(loop, trace):
        set_debug(loop, debug)
        if handler:
            record_handler(loop, trace)
        ctxs = var_contexts("ctx", 3)
        handles = []       # [handle, state, counted]
        outstanding = [0]
        T0 = loop.time()
        current = [None]   # (idx, slot) of the callback running now

        def done_one():
            outstanding[0] -= 1
            if outstanding[0] == 0:
                trace.append("all done")
                loop.stop()

        def run_cb(idx, slot, children, self_repr):
            current[0] = (idx, slot)
            h = handles[idx][0]
            entry = ["run", idx, VAR.get(), h.cancelled()]
            if self_repr and not skip_known:   # test_found_differences[self_repr_during_run]
                entry.append(norm(repr(h)))
            trace.append(tuple(entry))
            VAR.set(f"set-by-{idx}")
            state = handles[idx][1]
            handles[idx][1] = "ran"
            try:
                execute(children, idx, slot)
            finally:
                if handles[idx][2] and state == "pending":
                    done_one()
                current[0] = None

        def schedule(kind, op, who, slot):
            idx = len(handles)
            children = op[-1]
            ctx_k, self_repr = op[-2]
            kw = {} if ctx_k is None else {"context": ctxs[ctx_k]}
            new_slot = slot
            counted = kind in COUNTED
            if kind == "soon":
                h = loop.call_soon(run_cb, idx, slot, children, self_repr, **kw)
            elif kind == "threadsafe":
                h = loop.call_soon_threadsafe(run_cb, idx, slot, children, self_repr, **kw)
            elif kind == "thread":
                box = []

                def other():
                    try:
                        m = op[1]
                        if m == "threadsafe":
                            box.append(loop.call_soon_threadsafe(run_cb, idx, slot, children, self_repr, **kw))
                        elif m == "soon":
                            box.append(loop.call_soon(run_cb, idx, slot, children, self_repr, **kw))
                        elif m == "later":
                            box.append(loop.call_later(-1, run_cb, idx, slot, children, self_repr, **kw))
                        else:
                            box.append(loop.call_at(T0 - 100.5, run_cb, idx, slot, children, self_repr, **kw))
                    except Exception as e:
                        box.append(e)
                t = threading.Thread(target=other)
                t.start()
                t.join()
                h = box[0]
                if isinstance(h, Exception):
                    trace.append((who, "thread call", op[1], type(h).__name__, norm(h)))
                    return
            elif kind == "later":
                h = loop.call_later(op[1], run_cb, idx, slot, children, self_repr, **kw)
            elif kind == "later_slot":
                if who != "top":   # relative to now: only from the top level
                    return
                new_slot = op[1] + 1
                h = loop.call_later((op[1] + 0.5) * UNIT, run_cb, idx, new_slot, children, self_repr, **kw)
            elif kind == "at_past":
                h = loop.call_at(T0 - 100 + op[1], run_cb, idx, slot, children, self_repr, **kw)
            elif kind == "at_slot":
                new_slot = op[1] if who == "top" else slot + 2 + op[1] % 2
                h = loop.call_at(T0 + new_slot * UNIT, run_cb, idx, new_slot, children, self_repr, **kw)
            else:  # at_odd
                what = op[1]
                if what == "nan" and skip_known and sys.version_info >= (3, 13):
                    return  # test_known_differences[call_at_nan_idle_313]
                when = {"far": T0 + FAR, "inf": math.inf, "-inf": -math.inf, "nan": math.nan,
                        "int_past": int(T0) - 200,
                        # three deadlines with one float: ints compare exactly
                        "big_int": -(2 ** 60), "big_int_less": -(2 ** 60) - 1,
                        "big_float": float(-(2 ** 60))}.get(what)
                if what == "later_far":
                    h = loop.call_later(FAR, run_cb, idx, slot, children, self_repr, **kw)
                elif what == "later_inf":
                    h = loop.call_later(math.inf, run_cb, idx, slot, children, self_repr, **kw)
                elif what == "frac_past":
                    from fractions import Fraction
                    h = loop.call_at(Fraction(int(T0) - 300, 3), run_cb, idx, slot, children, self_repr, **kw)
                else:
                    h = loop.call_at(when, run_cb, idx, slot, children, self_repr, **kw)
                w = h.when()
                trace.append((who, "odd when", what, type(w).__name__,
                              w == when if when is not None and not math.isnan(when) else
                              (math.isnan(w) if what == "nan" else w > T0 + 1)))
            handles.append([h, "pending", counted])
            if counted:
                outstanding[0] += 1
            if kind in ("at_past", "at_slot"):
                want = T0 - 100 + op[1] if kind == "at_past" else T0 + new_slot * UNIT
                trace.append((who, "when", idx, h.when() == want))

        def act_bad(which, who):
            f = trace.append
            if which == "later_none":
                r = outcome(loop.call_later, None, f, "x")
            elif which == "later_str":
                r = outcome(loop.call_later, "1", f, "x")
            elif which == "later_hugeint":
                r = outcome(loop.call_later, 10 ** 400, f, "x")
            elif which == "at_none":
                if sys.version_info < (3, 11) and skip_known:
                    return  # test_known_differences[call_at_none_310]
                r = outcome(loop.call_at, None, f, "x")
            elif which == "at_bool":
                r = outcome(loop.call_at, True, f, ("at_bool", who))   # a past int deadline
            elif which == "soon_int":
                r = outcome(loop.call_soon, 1)
            elif which == "soon_kw":
                r = outcome(loop.call_soon, f, "x", contxt=None)
            elif which == "soon_badctx":
                if skip_known:
                    return  # test_found_differences[bad_context_type]
                r = outcome(loop.call_soon, f, ("badctx", who), context="not a context")
            else:
                if skip_known:
                    return
                r = outcome(loop.call_later, 0, f, ("badctx", who), context=42)
            trace.append((who, "bad", which, r[0], r[1] if r[0] != "ok" else type(r[1]).__name__))

        def act_nested(which, who):
            if which == "run_until_complete":
                c = asyncio.sleep(0)
                trace.append((who, which, outcome(loop.run_until_complete, c)))
                c.close()
                f = loop.create_future()
                trace.append((who, which, "future", outcome(loop.run_until_complete, f)))
            elif which == "run_forever":
                if skip_known:
                    # test_found_differences[nested_run_forever_resets_state]; then close()
                    # from the callback deadlocks ferroloop (3.13's asyncio closes its
                    # selector under the running loop)
                    return
                trace.append((who, which, outcome(loop.run_forever)))
            elif which == "close":
                trace.append((who, which, outcome(loop.close), loop.is_closed(), loop.is_running()))
            else:
                loop.stop()
                loop.stop()
                trace.append((who, "stopped twice"))

        def execute(ops, who, slot):
            pending_raise = None
            for op in ops:
                kind = op[0]
                if kind == "cancel":
                    if not handles:
                        continue
                    idx = op[1] % len(handles)
                    h, state, counted = handles[idx]
                    h.cancel()
                    if op[2]:
                        h.cancel()   # twice
                    trace.append((who, "cancel", idx, state, h.cancelled()))
                    if state == "pending":
                        handles[idx][1] = "cancelled"
                        if counted:
                            done_one()
                elif kind == "cancel_self":
                    if current[0] is None:
                        continue
                    idx = current[0][0]
                    handles[idx][0].cancel()
                    trace.append((who, "cancel self", handles[idx][0].cancelled()))
                elif kind == "repr":
                    if not handles:
                        continue
                    idx = op[1] % len(handles)
                    h, state, _ = handles[idx]
                    if state == "ran":   # ferroloop drops a callback once run, by design
                        continue
                    trace.append((who, "repr", idx, norm(repr(h))))
                elif kind == "ctx":
                    if not handles or not PY312:
                        continue
                    idx = op[1] % len(handles)
                    h = handles[idx][0]
                    c = h.get_context()
                    trace.append((who, "get_context", idx, [c is x for x in ctxs],
                                  type(c).__name__, c.get(VAR, "unset")))
                elif kind == "bad":
                    act_bad(op[1], who)
                elif kind == "nested":
                    if who == "top":
                        continue
                    act_nested(op[1], who)
                elif kind == "stop":
                    trace.append((who, "stop", loop.is_running()))
                    loop.stop()
                elif kind == "raise":
                    if who != "top":
                        pending_raise = op[1]
                elif kind == "time":
                    a = loop.time()
                    b = loop.time()
                    trace.append((who, "time", a <= b, type(a).__name__, a >= T0))
                else:
                    schedule(kind, op, who, slot)
            if pending_raise is not None:
                trace.append((who, "raising", pending_raise))
                raise {"ZeroDivisionError": ZeroDivisionError, "KeyboardInterrupt": KeyboardInterrupt,
                       "SystemExit": SystemExit}[pending_raise](f"from {who}")

        outstanding[0] += 1   # hold the run open while setting up
        execute(program, "top", 0)
        def guard_fired():   # a hang is a difference too, not a hung test
            trace.append(("GUARD TIMER FIRED", outstanding[0]))
            outstanding[0] = 0
            loop.stop()
        guard = loop.call_later(5, guard_fired)
        outstanding[0] -= 1
        runs = 0
        while outstanding[0] > 0 and runs < 50:
            runs += 1
            try:
                loop.run_forever()
                trace.append(("returned", loop.is_running(), outstanding[0] > 0))
            except BaseException as e:  # noqa: B902
                trace.append(("escaped", type(e).__name__, str(e), loop.is_running(), loop.is_closed()))
            if loop.is_closed():
                break
        if not loop.is_closed():
            guard.cancel()
            loop.call_soon(loop.stop)
            try:
                loop.run_forever()
            except BaseException as e:  # noqa: B902
                trace.append(("escaped at flush", type(e).__name__, str(e)))
        trace.append(("final", tuple(s for _, s, _ in handles)))
        trace.append(("cancelled", tuple(h.cancelled() for h, _, _ in handles)))

    return scenario


def _has_slots(program):
    return "slot" in repr(program)


@pytest.mark.uvloop_differs("uvloop's scheduling order and messages differ")
@settings(max_examples=examples(150), **SETTINGS)
@given(program=PROGRAMS)
def test_scheduling_programs(impl, program):
    check_same(make_program(program), retry=_has_slots(program))


@pytest.mark.uvloop_differs("uvloop's debug mode differs")
@settings(max_examples=examples(60), **SETTINGS)
@given(program=PROGRAMS, handler=st.booleans())
def test_scheduling_programs_debug(impl, program, handler):
    check_same(make_program(program, debug=True, handler=handler), retry=_has_slots(program))


# ===================================================== futures and tasks

STEP = st.one_of(
    st.just(("sleep0",)),
    st.tuples(st.just("await_fut"), st.integers(0, 5)),
    st.tuples(st.just("await_task"), st.integers(0, 5)),
    st.tuples(st.just("set_result"), st.integers(0, 5)),
    st.tuples(st.just("set_exception"), st.integers(0, 5)),
    st.tuples(st.just("cancel_fut"), st.integers(0, 5), st.sampled_from([None, "msg"])),
    st.tuples(st.just("cancel_task"), st.integers(0, 5), st.sampled_from([None, "why"])),
    st.tuples(st.just("spawn"), st.integers(0, 5)),
    st.just(("raise",)),
    st.just(("kbi",)),
    st.just(("current",)),
)

TASK_SPEC = st.tuples(
    st.sampled_from([None, "named", 7]),          # name=
    st.sampled_from([None, 0, 1]),                # context=
    st.lists(STEP, max_size=5).map(tuple),
)

FT_PROGRAMS = st.tuples(
    st.integers(0, 4),                                      # futures
    st.lists(TASK_SPEC, min_size=1, max_size=5),            # tasks
    st.booleans(),                                          # task factory
    st.sampled_from(["coroutine", "future", "task", "awaitable"]),   # how main runs
)


def make_ft_program(prog, debug=False):
    nfut, specs, factory, how = prog

    def scenario(loop, trace):
        set_debug(loop, debug)
        record_handler(loop, trace)
        ctxs = var_contexts("tctx", 2)
        futs = [loop.create_future() for _ in range(nfut)]
        tasks = []
        for i, f in enumerate(futs):
            f.add_done_callback(lambda f, i=i: trace.append(("fut done", i, f.cancelled(),
                                                             f.cancelled() or exc_name(f.exception()))))
        if factory:
            def task_factory(lp, coro, **kw):
                trace.append(("factory", sorted(kw)))
                return asyncio.Task(coro, loop=lp, **kw)
            loop.set_task_factory(task_factory)
            trace.append(("get_task_factory", loop.get_task_factory() is task_factory))

        def pick(seq, j):
            return seq[j % len(seq)] if seq else None

        async def body(i, steps):
            t = asyncio.current_task()
            trace.append(("start", i, norm(t.get_name()) if t else None, VAR.get()))
            VAR.set(f"task{i}")
            for step in steps:
                k = step[0]
                try:
                    if k == "sleep0":
                        await asyncio.sleep(0)
                    elif k == "await_fut":
                        f = pick(futs, step[1])
                        if f is not None:
                            trace.append((i, "fut", await f))
                    elif k == "await_task":
                        # Only an earlier task: two tasks awaiting each other
                        # would hang the program on every loop.
                        other = pick(tasks[:i], step[1])
                        if other is not None and other is not t:
                            trace.append((i, "task", await other))
                    elif k == "set_result":
                        f = pick(futs, step[1])
                        if f is not None:
                            trace.append((i, "set_result", outcome(f.set_result, i)))
                    elif k == "set_exception":
                        f = pick(futs, step[1])
                        if f is not None:
                            trace.append((i, "set_exception", outcome(f.set_exception, ValueError(i))))
                    elif k == "cancel_fut":
                        f = pick(futs, step[1])
                        if f is not None:
                            trace.append((i, "cancel_fut", f.cancel(*(() if step[2] is None else (step[2],)))))
                    elif k == "cancel_task":
                        other = pick(tasks, step[1])
                        if other is not None:
                            trace.append((i, "cancel_task", other is t,
                                          other.cancel(*(() if step[2] is None else (step[2],)))))
                    elif k == "spawn":
                        j = len(tasks)
                        if j < 8:
                            tasks.append(loop.create_task(body(j, ())))
                            tasks[-1].add_done_callback(done_cb(j))
                    elif k == "raise":
                        raise LookupError(f"task {i}")
                    elif k == "kbi":
                        raise KeyboardInterrupt(f"task {i}")
                    elif k == "current":
                        trace.append((i, "current is self", asyncio.current_task() is t, VAR.get()))
                except asyncio.CancelledError as e:
                    trace.append((i, "cancelled", k, e.args))
                    raise
                except (ValueError, asyncio.InvalidStateError) as e:
                    trace.append((i, "caught", type(e).__name__, str(e)))
            return f"r{i}"

        def done_cb(i):
            def cb(t):
                if t.cancelled():
                    trace.append(("task done", i, "cancelled"))
                else:
                    e = t.exception()
                    trace.append(("task done", i, exc_name(e), str(e) if e else t.result()))
            return cb

        async def main():
            for i, (name, ctx_k, steps) in enumerate(specs):
                kw = {}
                if name is not None:
                    kw["name"] = name
                if ctx_k is not None and sys.version_info >= (3, 11):
                    kw["context"] = ctxs[ctx_k]
                tasks.append(loop.create_task(body(i, steps), **kw))
                tasks[-1].add_done_callback(done_cb(i))
            for _ in range(3):
                await asyncio.sleep(0)
            for i, f in enumerate(futs):
                if not f.done():
                    f.set_result(f"late{i}")
            res = await asyncio.gather(*tasks, return_exceptions=True)
            return [type(r).__name__ if isinstance(r, BaseException) else r for r in res]

        class Awaitable:
            def __await__(self):
                return main().__await__()

        for attempt in range(4):
            if attempt == 0:
                arg = {"coroutine": main, "awaitable": Awaitable,
                       "future": lambda: asyncio.ensure_future(main(), loop=loop),
                       "task": lambda: loop.create_task(main())}[how]()
            else:   # after KeyboardInterrupt: wait for what is left
                async def drain():
                    for _ in range(3):
                        await asyncio.sleep(0)
                    for f in futs:
                        if not f.done():
                            f.set_result("drained")
                    await asyncio.gather(*tasks, return_exceptions=True)
                    return "drained"
                arg = drain()
            try:
                trace.append(("main", loop.run_until_complete(arg)))
                break
            except BaseException as e:  # noqa: B902
                trace.append(("main raised", type(e).__name__, str(e), loop.is_running()))
                if hasattr(arg, "close"):
                    arg.close()
        trace.append(("states", [t.done() and (t.cancelled() or exc_name(t.exception())) for t in tasks]))
        for bad in (42, lambda: None, None):
            trace.append(("bad run_until_complete", outcome(loop.run_until_complete, bad)[0]))
        if factory:
            loop.set_task_factory(None)

    return scenario


@settings(max_examples=examples(100), **SETTINGS)
@given(prog=FT_PROGRAMS, debug=st.booleans())
def test_future_task_programs(impl, prog, debug):
    check_same(make_ft_program(prog, debug))


# ========================================================== loop API

API_OPS = st.lists(st.one_of(
    st.tuples(st.just("set_debug"), st.sampled_from([True, False, 1, 0, "yes", None])),
    st.tuples(st.just("slow_duration"), st.sampled_from([0.001, 0.5, 2, 0])),
    st.just(("slow_cb",)),
    st.just(("agen",)),
    st.just(("shutdown_asyncgens",)),
    st.tuples(st.just("executor"), st.sampled_from(["ok", "raise"])),
    st.just(("state",)),
    st.just(("clock",)),
    st.just(("run_once",)),
), min_size=1, max_size=10)


def make_api_program(ops, skip_known=True):
    def scenario(loop, trace):
        record_handler(loop, trace)
        agens = []
        finals = []

        def flush_finals():
            trace.append(sorted(finals))
            del finals[:]

        async def gen(i):
            try:
                trace.append(("agen start", i))
                yield i
                yield i + 1
            finally:
                # (shutdown_asyncgens closes them in the order of a WeakSet)
                finals.append(("agen finally", i, asyncio.get_running_loop() is loop))

        def work(x, fail):
            if fail:
                raise OSError(f"work {x}")
            return x * 3

        def _cb_slow_():
            time.sleep(0.05)

        for n, op in enumerate(ops):
            k = op[0]
            if k == "set_debug":
                loop.set_debug(op[1])
                trace.append(("debug", repr(loop.get_debug())))
            elif k == "slow_duration":
                loop.slow_callback_duration = op[1]
                trace.append(("slow duration", repr(loop.slow_callback_duration)))
            elif k == "slow_cb":
                loop.call_soon(_cb_slow_)   # 50 ms: slow or not whatever the threshold
                loop.call_soon(loop.stop)
                loop.run_forever()
            elif k == "agen":
                async def start(i=n):
                    g = gen(i)
                    agens.append(g)
                    return await g.__anext__()
                trace.append(("agen", loop.run_until_complete(start())))
            elif k == "shutdown_asyncgens":
                trace.append(("shutdown", outcome(loop.run_until_complete, loop.shutdown_asyncgens())))
                flush_finals()
            elif k == "executor":
                async def go(i=n, fail=op[1] == "raise"):
                    return await loop.run_in_executor(None, work, i, fail)
                trace.append(("executor", outcome(loop.run_until_complete, go())))
            elif k == "state":
                async def inside():
                    return loop.is_running(), loop.is_closed(), asyncio.get_running_loop() is loop
                trace.append(("state", loop.is_running(), loop.is_closed(),
                              loop.run_until_complete(inside())))
            elif k == "clock":
                a = loop.time()
                h = loop.call_later(5, lambda: None)
                b = loop.time()
                h2 = loop.call_at(a + 3, lambda: None)
                trace.append(("clock", a <= b, a + 5 <= h.when() <= b + 5, h2.when() == a + 3,
                              type(h.when()).__name__, abs(loop.time() - time.monotonic()) < 1))
                h.cancel()
                h2.cancel()
            elif k == "run_once":
                loop.call_soon(trace.append, ("soon", n))
                loop.call_later(-1, trace.append, ("later", n))
                loop.stop()
                loop.run_forever()
        trace.append(("end shutdown", outcome(loop.run_until_complete, loop.shutdown_asyncgens())))
        flush_finals()
        trace.append(("left", len(agens)))
        if sys.version_info >= (3, 9):
            trace.append(("executor shutdown",
                          outcome(loop.run_until_complete, loop.shutdown_default_executor())))
        loop.close()
        trace.append(("closed", loop.is_closed(), outcome(loop.call_soon, print)[0],
                      outcome(loop.run_forever)))

    return scenario


@settings(max_examples=examples(40), **SETTINGS)
@given(ops=API_OPS)
def test_loop_api_programs(impl, ops):
    check_same(make_api_program(ops))


# ============================================ edge cases found / pinned

def _self_cancel_then_raise(debug):
    def scenario(loop, trace):
        loop.set_debug(debug)
        record_handler(loop, trace)
        box = {}

        def cb():
            box["h"].cancel()
            raise ZeroDivisionError("after self-cancel")
        box["h"] = loop.call_soon(cb)
        loop.call_soon(loop.stop)
        loop.run_forever()
    return scenario


def self_repr_during_run(loop, trace):
    # While it runs a handle shows its callback (after the run ferroloop's
    # one-shot handles drop it by design, so that is not compared).
    box = {}

    def cb(key):
        trace.append(norm(repr(box[key])))
        trace.append((box[key]._callback is cb, box[key]._args))
    box["h"] = loop.call_soon(cb, "h")
    box["t"] = loop.call_later(-1, cb, "t")
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.call_soon(loop.stop)
    loop.run_forever()


def bad_context_type(loop, trace):
    record_handler(loop, trace)
    loop.call_soon(trace.append, "never", context="not a context")
    loop.call_later(0, trace.append, "never", context=42)
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.call_soon(loop.stop)
    loop.run_forever()


def slow_callback_duration_int(loop, trace):
    for value in (1, 0, True):
        loop.slow_callback_duration = value
        trace.append(repr(loop.slow_callback_duration))
    # any object is kept; debug mode compares it after each callback
    loop.set_debug(True)
    loop.slow_callback_duration = "slow"
    loop.call_soon(trace.append, "ran")
    trace.append(outcome(loop.run_forever))
    trace.append((loop.is_running(), loop.slow_callback_duration))


def call_at_string(loop, trace):
    record_handler(loop, trace)
    trace.append(outcome(loop.call_at, "soon", trace.append, "x")[0])
    loop.call_soon(loop.stop)
    trace.append(outcome(loop.run_forever)[0])


def call_at_none_310(loop, trace):
    record_handler(loop, trace)
    trace.append(outcome(loop.call_at, None, trace.append, "x")[0])
    loop.call_soon(loop.stop)
    trace.append(outcome(loop.run_forever)[0])


def call_at_huge_int(loop, trace):
    # asyncio keeps the int; subtracting the clock to compute the poll
    # timeout then fails with OverflowError once it heads the heap
    trace.append(outcome(loop.call_at, 10 ** 400, trace.append, "x")[0])
    loop.call_later(0.001, loop.stop)
    trace.append(outcome(loop.run_forever)[0])


def call_at_nan_idle_313(loop, trace):
    # 3.13's asyncio computes the poll timeout as `when - time()` clamped by
    # two comparisons, both False for NaN: with a NaN deadline at the head
    # of the heap and nothing ready, every iteration fails polling with
    # ValueError (3.10-3.12 clamp with max/min, which gives 0)
    trace.append(outcome(loop.call_at, math.nan, trace.append, "nan")[0])
    loop.call_later(-1, trace.append, "past")
    loop.call_later(0.001, loop.stop)
    trace.append(outcome(loop.run_forever))


def int_deadlines_beyond_float_precision(loop, trace):
    # ints are compared exactly by asyncio; two that round to the same
    # float must still run in their order
    base = -(2 ** 60)
    loop.call_at(base, trace.append, "base")
    loop.call_at(base - 1, trace.append, "base-1")
    loop.call_at(float(base) , trace.append, "float base")
    loop.call_soon(loop.stop)
    loop.run_forever()


def nested_run_forever_resets_state(loop, trace):
    # ferroloop's run_forever runs its cleanup even when its setup refused
    # to run (already running): the running loop then says it is not
    # running, forgets stop(), and close() from a callback deadlocks
    # (python/ferroloop/_loop.py, Loop.run_forever: setup inside the try)
    def cb():
        loop.stop()
        trace.append(outcome(loop.run_forever))
        trace.append((loop.is_running(), asyncio._get_running_loop() is loop, loop._stopping))
    loop.call_soon(cb)
    loop.call_later(0.2, loop.stop)
    loop.call_later(0.1, trace.append, "timer ran: stop() was lost")
    loop.run_forever()


def call_soon_keyword_typo(loop, trace):
    # 3.13+ suggests the keyword ("Did you mean 'context'?"), which
    # ferroloop's hand-parsed call_soon once did not
    trace.append(outcome(loop.call_soon, print, contxt=None))
    trace.append(outcome(loop.call_soon_threadsafe, print, contxt=None))


def _pinned(id, scenario, since=(3, 10), before=(4,)):
    applies = since <= sys.version_info[:2] < before
    return pytest.param(scenario, id=id, marks=pytest.mark.skipif(
        not applies, reason="no difference on this Python"))


def _known(id, scenario, reason, since=(3, 10), before=(4,)):
    applies = since <= sys.version_info[:2] < before
    return pytest.param(scenario, id=id, marks=[
        pytest.mark.skipif(not applies, reason="no difference on this Python"),
        pytest.mark.skipif(IMPL is None or IMPL.name != "ferroloop", reason="ferroloop's differences"),
        pytest.mark.xfail(strict=True, reason="ferroloop differs: " + reason)])


@pytest.mark.parametrize("scenario", [
    # ferroloop differences the programs found (they skip them), fixed since
    pytest.param(_self_cancel_then_raise(False), id="self_cancel_then_raise"),
    pytest.param(_self_cancel_then_raise(True), id="self_cancel_then_raise_debug"),
    pytest.param(self_repr_during_run, id="self_repr_during_run"),
    # (3.13's asyncio has the same flaw: its run_forever calls setup inside the try)
    _pinned("nested_run_forever_resets_state", nested_run_forever_resets_state, before=(3, 13)),
    pytest.param(bad_context_type, id="bad_context_type"),
    pytest.param(slow_callback_duration_int, id="slow_callback_duration_int"),
    pytest.param(call_soon_keyword_typo, id="call_soon_keyword_typo"),
    pytest.param(int_deadlines_beyond_float_precision, id="int_deadlines_beyond_float_precision"),
])
def test_found_differences(impl, scenario):
    check_same(scenario)


@pytest.mark.parametrize("scenario", [
    # asyncio fails on its own state: ferroloop keeps the sound behaviour
    _known("call_at_string", call_at_string,
           "call_at('soon') raises TypeError at once (asyncio queues it, then every "
           "iteration fails with TypeError from run_forever)"),
    _known("call_at_none_310", call_at_none_310,
           "call_at(None) raises TypeError at once (3.10's asyncio queues it, then "
           "run_forever fails)", before=(3, 11)),
    _known("call_at_nan_idle_313", call_at_nan_idle_313,
           "a NaN deadline heading the timers runs as due (3.13's asyncio fails every "
           "iteration with ValueError computing the poll timeout)", since=(3, 13)),
    _known("call_at_huge_int", call_at_huge_int,
           "call_at(10**400) raises OverflowError at once (asyncio queues it, then "
           "run_forever fails with OverflowError computing the poll timeout)"),
])
def test_known_differences(impl, scenario):
    check_same(scenario)
