"""Async generator hooks and shutdown_asyncgens."""

import asyncio
import gc
import sys
import warnings

import pytest

from conftest import exc_outcome


def test_shutdown_asyncgens_finalizes(same):
    def scenario(loop, trace):
        async def agen(name):
            try:
                yield 1
                yield 2
            finally:
                trace.append(("finalized", name))

        gens = []

        async def main():
            for n in ("a", "b"):
                g = agen(n)
                gens.append(g)
                trace.append(await g.__anext__())
        loop.run_until_complete(main())
        trace.append("before-shutdown")
        loop.run_until_complete(loop.shutdown_asyncgens())
        trace.append("after-shutdown")

    t = same(scenario, normalize=lambda t: t[:3] + sorted(t[3:-1], key=repr)
             + t[-1:])
    assert ("finalized", "a") in t and ("finalized", "b") in t


def test_gc_of_unfinished_asyncgen_while_running_finalizes(same):
    def scenario(loop, trace):
        async def agen():
            try:
                yield 1
                yield 2
            finally:
                trace.append("finalized-in-loop")
                trace.append(asyncio.get_running_loop() is loop)

        async def main():
            g = agen()
            await g.__anext__()
            del g
            gc.collect()
            for _ in range(5):
                await asyncio.sleep(0)
            trace.append("main-done")
        loop.run_until_complete(main())

    assert same(scenario) == ["finalized-in-loop", True, "main-done"]


def test_asyncgen_hooks_installed_only_while_running(same):
    def scenario(loop, trace):
        before = sys.get_asyncgen_hooks()

        async def main():
            h = sys.get_asyncgen_hooks()
            trace.append((h.firstiter is not None, h.finalizer is not None))
        loop.run_until_complete(main())
        trace.append(sys.get_asyncgen_hooks() == before)

    assert same(scenario) == [(True, True), True]


def test_asyncgen_aclose_error_reported(same):
    def scenario(loop, trace):
        loop.set_exception_handler(lambda lp, ctx: trace.append(
            (ctx["message"].split(" ")[:6],
             type(ctx.get("exception")).__name__)))

        async def agen():
            try:
                yield 1
            finally:
                raise ValueError("in finally")

        holder = []

        async def main():
            g = agen()
            holder.append(g)
            await g.__anext__()
        loop.run_until_complete(main())
        loop.run_until_complete(loop.shutdown_asyncgens())

    assert same(scenario) == [(
        ["an", "error", "occurred", "during", "closing", "of"],
        "ValueError")]


@pytest.mark.uvloop_differs("uvloop does not warn")
def test_asyncgen_after_shutdown_warns(same):
    def scenario(loop, trace):
        loop.run_until_complete(loop.shutdown_asyncgens())

        async def agen():
            yield 1

        async def main():
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                g = agen()
                await g.__anext__()
                await g.aclose()
            trace.extend((x.category.__name__,
                          "was scheduled after loop.shutdown_asyncgens()"
                          in str(x.message)) for x in w)
        loop.run_until_complete(main())

    assert same(scenario) == [("ResourceWarning", True)]


def test_shutdown_asyncgens_twice_and_empty(same):
    def scenario(loop, trace):
        trace.append(loop.run_until_complete(loop.shutdown_asyncgens()))
        trace.append(loop.run_until_complete(loop.shutdown_asyncgens()))

    assert same(scenario) == [None, None]


def test_asyncgen_hooks_restored_after_exception(same):
    def scenario(loop, trace):
        before = sys.get_asyncgen_hooks()

        async def main():
            raise RuntimeError("x")
        trace.append(exc_outcome(loop.run_until_complete, main()))
        trace.append(sys.get_asyncgen_hooks() == before)

    assert same(scenario) == [("RuntimeError", "x"), True]
