"""Event-loop microbenchmarks.

Every benchmark is a plain function ``bench_<name>(loop, n) -> ops``: it gets
a fresh, not-running event loop, does about ``n`` operations on it and returns
the exact number of operations it completed.  The harness (``child_run``)
times the call, so the Python work per operation is kept tiny and identical
for every loop: what differs between loops is the loop's own overhead.

The driver (bench/run.py) runs each (loop, benchmark, repeat) in a fresh
process through ``child_run``; a benchmark can also be run by hand:

    python bench/micro.py call_soon uvloop [n]
"""

import asyncio
import gc
import sys
import threading
import time
from dataclasses import dataclass

import loops


# --------------------------------------------------------------------------
# 1. call_soon
# --------------------------------------------------------------------------

CALL_SOON_BATCH = 1000


def bench_call_soon(loop, n):
    """Callbacks/s: a re-arming callback schedules batches of call_soon(cb)."""
    batch = CALL_SOON_BATCH
    rounds = max(1, n // batch)
    call_soon = loop.call_soon
    left = rounds

    def cb():
        pass

    def rearm():
        nonlocal left
        for _ in range(batch):
            call_soon(cb)
        left -= 1
        # FIFO: the re-arm (or the stop) runs after this batch of callbacks.
        call_soon(rearm if left else loop.stop)

    call_soon(rearm)
    loop.run_forever()
    return rounds * batch


# --------------------------------------------------------------------------
# 2. call_later with ~50% cancelled
# --------------------------------------------------------------------------

TIMER_POPULATION = 6_000
# Delays of 1.0-1.6 ms, in a non-monotone order so the timer queue really has
# to sort.  They must be >= 1 ms: uvloop turns call_later(d < 0.5 ms), and
# call_at() in the past, into a plain call_soon.  With P timers in flight and
# a maximum delay D the loop can never sleep while it fires < P/D timers/s
# (here 3.75M/s); bench_timers warns when a loop gets within 2x of that.
_TIMER_DELAYS = [1e-3 + ((i * 7) % 13) * 5e-5 for i in range(13)]


def bench_timers(loop, n):
    """Timer ops/s (fired + cancelled): a steady population of 6,000 real
    timers (call_later, 1-1.6 ms); each firing timer re-arms itself and
    replaces a "timeout" timer, cancelling the previous one, so half of all
    timers are cancelled before they fire.  The population is large enough
    that timers are always overdue when the loop reaches them: the loop never
    sleeps and the run is bound by timer-queue work, not by the clock."""
    population = TIMER_POPULATION
    target = max(1, n // 2)  # n ops = target fires + target cancels
    delays = _TIMER_DELAYS
    ndelays = len(delays)
    call_later = loop.call_later
    handles = [None] * population
    fired = 0
    decoy = None

    def never():  # pragma: no cover - always cancelled
        raise AssertionError("cancelled timer fired")

    def fire(slot):
        nonlocal fired, decoy
        fired += 1
        d = delays[fired % ndelays]
        handles[slot] = call_later(d, fire, slot)
        decoy.cancel()
        decoy = call_later(d, never)
        if fired == target:
            loop.stop()

    def start():
        nonlocal decoy
        decoy = call_later(3600.0, never)  # cancelled by the first fire
        for slot in range(population):
            handles[slot] = call_later(delays[slot % ndelays], fire, slot)

    t0 = time.perf_counter()
    loop.call_soon(start)
    loop.run_forever()
    rate = fired / (time.perf_counter() - t0)
    if fired > 2 * population and rate > 0.5 * population / max(delays):
        # Near the rate at which timers stop being overdue: the loop may have
        # slept, so the number understates it.  Raise TIMER_POPULATION.
        print(f"warning: timers: {rate:,.0f} fires/s is close to the bound "
              f"{population / max(delays):,.0f}/s of TIMER_POPULATION", file=sys.stderr)
    # Leave the loop empty for the next run (inside the timed region: it is
    # the same small cost for every loop).
    for h in handles:
        h.cancel()
    decoy.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    return fired * 2


# --------------------------------------------------------------------------
# 3. create_task + gather
# --------------------------------------------------------------------------

GATHER_WIDTH = 100


async def _noop():
    pass


def bench_gather(loop, n):
    """Tasks/s: repeated asyncio.gather of K=100 trivial tasks made with
    loop.create_task."""
    width = GATHER_WIDTH
    rounds = max(1, n // width)
    gather = asyncio.gather
    noop = _noop

    async def main():
        create_task = loop.create_task
        for _ in range(rounds):
            await gather(*[create_task(noop()) for _ in range(width)])

    loop.run_until_complete(main())
    return rounds * width


# --------------------------------------------------------------------------
# 4. sleep(0) ping-pong
# --------------------------------------------------------------------------


def bench_sleep0(loop, n):
    """Task switches/s: two tasks alternating through `await asyncio.sleep(0)`."""
    per_task = max(1, n // 2)
    sleep = asyncio.sleep

    async def player():
        for _ in range(per_task):
            await sleep(0)

    async def main():
        await asyncio.gather(loop.create_task(player()), loop.create_task(player()))

    loop.run_until_complete(main())
    return per_task * 2


# --------------------------------------------------------------------------
# 5. future done-callback chain
# --------------------------------------------------------------------------

CHAIN_LENGTH = 1000


def bench_future_chain(loop, n):
    """Futures/s: chains of 1000 futures where each one's done-callback sets
    the result of the next; the last one starts the next chain."""
    length = CHAIN_LENGTH
    rounds = max(1, n // length)
    create_future = loop.create_future
    futs = []
    idx = 0
    left = rounds

    def link(fut):
        nonlocal idx
        idx += 1
        futs[idx].set_result(None)

    def chain_done(fut):
        nonlocal left
        left -= 1
        if left:
            start()
        else:
            loop.stop()

    def start():
        nonlocal futs, idx
        futs = [create_future() for _ in range(length)]
        for f in futs[:-1]:
            f.add_done_callback(link)
        futs[-1].add_done_callback(chain_done)
        idx = 0
        futs[0].set_result(None)

    loop.call_soon(start)
    loop.run_forever()
    return rounds * length


# --------------------------------------------------------------------------
# 6. asyncio.Queue producer/consumer
# --------------------------------------------------------------------------

QUEUE_MAXSIZE = 1


def bench_queue(loop, n):
    """Items/s through asyncio.Queue(maxsize=1): one producer task, one
    consumer task, so every item costs a wake-up of each side."""

    async def main():
        q = asyncio.Queue(QUEUE_MAXSIZE)

        async def producer():
            put = q.put
            for i in range(n):
                await put(i)
            await put(None)

        async def consumer():
            get = q.get
            while (await get()) is not None:
                pass

        await asyncio.gather(loop.create_task(producer()), loop.create_task(consumer()))

    loop.run_until_complete(main())
    return n


# --------------------------------------------------------------------------
# 7. call_soon_threadsafe from another thread
# --------------------------------------------------------------------------


def bench_threadsafe(loop, n):
    """Callbacks/s: another thread calls loop.call_soon_threadsafe(cb) n times;
    the n-th callback stops the loop."""
    count = 0

    def cb():
        nonlocal count
        count += 1
        if count == n:
            loop.stop()

    def producer():
        call = loop.call_soon_threadsafe
        for _ in range(n):
            call(cb)

    t = threading.Thread(target=producer, daemon=True)
    # Start the thread once the loop is running.
    loop.call_soon(t.start)
    loop.run_forever()
    t.join()
    return count


# --------------------------------------------------------------------------
# Registry and harness
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    fn: object
    n: int  # operations per repeat in normal mode (~0.3-1 s on uvloop/asyncio)
    quick_n: int  # operations per repeat with --quick
    unit: str
    what: str


BENCHMARKS = {
    "call_soon": Bench(bench_call_soon, 2_500_000, 20_000, "callbacks", "call_soon batches of 1000"),
    "timers": Bench(bench_timers, 500_000, 10_000, "timer ops", "call_later 1-1.6 ms, 50% cancelled"),
    "gather": Bench(bench_gather, 200_000, 5_000, "tasks", "create_task + gather(100)"),
    "sleep0": Bench(bench_sleep0, 700_000, 5_000, "switches", "2 tasks ping-pong via sleep(0)"),
    "future_chain": Bench(bench_future_chain, 500_000, 10_000, "futures", "done-callback chain of 1000"),
    "queue": Bench(bench_queue, 120_000, 5_000, "items", "Queue(maxsize=1) producer/consumer"),
    "threadsafe": Bench(bench_threadsafe, 600_000, 10_000, "callbacks", "call_soon_threadsafe from a thread"),
}


def child_run(loop_name, bench_name, n, benchmarks=None):
    """Run one benchmark (of ``benchmarks``, default this module's) on one
    fresh loop in this process; return a dict.

    A short warm-up on the same loop comes first (it fills caches and
    free-lists, lets lazy imports happen), then the measured run.
    """
    bench = (benchmarks or BENCHMARKS)[bench_name]
    loop = loops.new_loop(loop_name)
    asyncio.set_event_loop(loop)
    try:
        bench.fn(loop, max(1, n // 10))
        gc.collect()
        t0 = time.perf_counter()
        ops = bench.fn(loop, n)
        dt = time.perf_counter() - t0
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return {"ops": ops, "seconds": dt, "ops_per_sec": ops / dt}


if __name__ == "__main__":
    name, loop_name = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else BENCHMARKS[name].n
    r = child_run(loop_name, name, n)
    print(f"{name} on {loop_name}: {r['ops_per_sec']:,.0f} ops/s ({r['ops']} ops in {r['seconds']:.3f} s)")
