"""call_soon_threadsafe: wake-ups from other threads, many producers."""

import asyncio
import threading
import time

import pytest

from conftest import exc_outcome


def _wake_latency(loop, delay=0.1, with_timer=False):
    """Loop sleeps with nothing to do; another thread wakes it."""
    stamps = {}
    if with_timer:
        loop.call_later(30, lambda: None)

    def target():
        time.sleep(delay)
        stamps["sent"] = time.monotonic()
        loop.call_soon_threadsafe(on_wake)

    def on_wake():
        stamps["ran"] = time.monotonic()
        loop.stop()

    guard = loop.call_later(10, loop.stop)
    t = threading.Thread(target=target)
    t.start()
    loop.run_forever()
    t.join()
    guard.cancel()
    assert "ran" in stamps, "loop was not woken by call_soon_threadsafe"
    return stamps["ran"] - stamps["sent"]


def test_threadsafe_wakes_idle_loop_promptly(loop):
    assert _wake_latency(loop) < 0.25


def test_threadsafe_wakes_loop_waiting_on_far_timer(loop):
    assert _wake_latency(loop, with_timer=True) < 0.25


def test_threadsafe_wakes_loop_awaiting_future(loop):
    fut = loop.create_future()

    def target():
        time.sleep(0.1)
        loop.call_soon_threadsafe(fut.set_result, time.monotonic())

    t = threading.Thread(target=target)
    t.start()
    sent = loop.run_until_complete(asyncio.wait_for(fut, 10))
    latency = time.monotonic() - sent
    t.join()
    assert latency < 0.25


def test_threadsafe_repeated_wakeups(loop):
    # many sleep/wake cycles: no lost wake-up
    n = 50
    got = []

    async def main():
        for i in range(n):
            fut = loop.create_future()
            threading.Thread(
                target=loop.call_soon_threadsafe,
                args=(fut.set_result, i)).start()
            got.append(await asyncio.wait_for(fut, 5))

    loop.run_until_complete(main())
    assert got == list(range(n))


def test_many_threads_concurrently(loop):
    n_threads, per_thread = 8, 500
    total = n_threads * per_thread
    seen = []
    start = threading.Barrier(n_threads)

    def on_item(tid, i):
        seen.append((tid, i))
        if len(seen) == total:
            loop.stop()

    def producer(tid):
        start.wait()
        for i in range(per_thread):
            loop.call_soon_threadsafe(on_item, tid, i)

    guard = loop.call_later(20, loop.stop)
    threads = [threading.Thread(target=producer, args=(t,))
               for t in range(n_threads)]
    for t in threads:
        t.start()
    loop.run_forever()
    for t in threads:
        t.join()
    guard.cancel()
    assert len(seen) == total
    for tid in range(n_threads):
        mine = [i for t, i in seen if t == tid]
        assert mine == list(range(per_thread)), "per-thread FIFO violated"


def test_threadsafe_before_run_and_handle_cancel_from_thread(loop):
    trace = []
    h1 = loop.call_soon_threadsafe(trace.append, "cancelled")
    loop.call_soon_threadsafe(trace.append, "kept")
    t = threading.Thread(target=h1.cancel)
    t.start()
    t.join()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert trace == ["kept"]
    assert h1.cancelled()
    assert type(h1).__name__ == "Handle"


def test_threadsafe_on_closed_loop(same):
    def scenario(loop, trace):
        loop.close()
        res = []
        t = threading.Thread(
            target=lambda: res.append(
                exc_outcome(loop.call_soon_threadsafe, print)))
        t.start()
        t.join()
        trace.extend(res)

    assert same(scenario) == [("RuntimeError", "Event loop is closed")]


def test_run_coroutine_threadsafe(loop):
    async def work(x):
        await asyncio.sleep(0.01)
        return x + 1

    results = []

    def client():
        futs = [asyncio.run_coroutine_threadsafe(work(i), loop)
                for i in range(20)]
        results.extend(f.result(timeout=10) for f in futs)
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=client)
    t.start()
    loop.run_forever()
    t.join()
    assert results == list(range(1, 21))


def test_threadsafe_while_callbacks_busy(loop):
    # a thread hammering the loop while it also runs its own call_soon chain
    trace = []
    done = threading.Event()

    def chain(i):
        trace.append(("chain", i))
        if i < 2000:
            loop.call_soon(chain, i + 1)
        elif done.is_set():
            loop.stop()
        else:
            loop.call_later(0.001, chain, i)

    def producer():
        for i in range(2000):
            loop.call_soon_threadsafe(trace.append, ("thread", i))
        done.set()

    t = threading.Thread(target=producer)
    loop.call_soon(chain, 0)
    guard = loop.call_later(20, loop.stop)
    t.start()
    loop.run_forever()
    t.join()
    guard.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    from_thread = [i for k, i in trace if k == "thread"]
    assert from_thread == list(range(2000))


@pytest.mark.parametrize("debug", [False, True])
def test_threadsafe_from_thread_in_debug_mode_allowed(loop, debug):
    loop.set_debug(debug)
    fut = loop.create_future()
    t = threading.Thread(
        target=lambda: loop.call_soon_threadsafe(fut.set_result, 7))

    async def main():
        t.start()
        return await asyncio.wait_for(fut, 5)

    assert loop.run_until_complete(main()) == 7
    t.join()


def test_stop_from_another_thread_wakes_the_loop(impl):
    """`loop.stop()` is not thread-safe in asyncio: called from another
    thread, it only sets a flag, and a loop waiting in its poll sleeps until
    its next event (here a timer 30 s away). ferroloop wakes the loop, which
    stops at once (a documented difference: it does not reproduce the wait)."""
    loop = impl.new_event_loop()
    try:
        ran = []
        loop.call_later(30, ran.append, "timer")
        t = threading.Timer(0.1, loop.stop)
        t.start()
        started = time.monotonic()
        loop.run_forever()
        t.join()
        assert time.monotonic() - started < 5
        assert ran == []
    finally:
        loop.close()
