"""Public entry points: run, Loop, new_event_loop, policy, install, -m."""

import asyncio
import contextvars
import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO_DIR, TESTS_DIR, child_env, exc_outcome


def test_loop_class_and_factory(impl):
    loop = impl.new_event_loop()
    try:
        assert isinstance(loop, impl.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
        assert not loop.is_running() and not loop.is_closed()
    finally:
        loop.close()


def test_run_returns_result_on_impl_loop(impl):
    async def main(x):
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        return x, type(loop), loop.get_debug()

    x, cls, debug = impl.run(main(5))
    assert x == 5 and issubclass(cls, impl.Loop) and debug is False
    assert impl.run(main(1), debug=True)[2] is True


def test_run_propagates_exception_and_closes_loop(impl):
    loops = []

    async def main():
        loops.append(asyncio.get_running_loop())
        raise KeyError("x")

    with pytest.raises(KeyError):
        impl.run(main())
    assert loops[0].is_closed()


def test_run_cancels_leftover_tasks_and_finalizes_asyncgens(impl):
    log = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            log.append("agen-finalized")

    async def sleeper():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            log.append("task-cancelled")
            raise

    async def main():
        asyncio.get_running_loop().create_task(sleeper())
        g = agen()
        await g.__anext__()
        main.g = g     # keep it alive until shutdown_asyncgens
        await asyncio.sleep(0)
        return "done"

    assert impl.run(main()) == "done"
    assert sorted(log) == ["agen-finalized", "task-cancelled"]


@pytest.mark.uvloop_differs("uvloop.run raises TypeError")
def test_run_rejects_non_coroutine_like_asyncio_run(impl):
    assert exc_outcome(impl.run, 42)[0] == exc_outcome(asyncio.run, 42)[0]


def test_run_inside_running_loop_raises(impl):
    async def main():
        c = asyncio.sleep(0)
        try:
            return exc_outcome(impl.run, c)
        finally:
            c.close()
    r = asyncio.run(main())
    assert r[0] == "RuntimeError"
    assert "cannot be called from a running event loop" in r[1]


def test_run_copies_no_context_leak(impl):
    var = contextvars.ContextVar("v", default="d")

    async def main():
        var.set("inside")
        return var.get()
    assert impl.run(main()) == "inside"
    assert var.get() == "d"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner 3.11+")
def test_asyncio_runner_with_loop_factory(impl):
    async def main():
        return type(asyncio.get_running_loop())
    with asyncio.Runner(loop_factory=impl.new_event_loop) as runner:
        assert issubclass(runner.run(main()), impl.Loop)
        assert issubclass(runner.run(main()), impl.Loop)
        assert isinstance(runner.get_loop(), impl.Loop)


@pytest.mark.skipif(sys.version_info < (3, 12),
                    reason="asyncio.run(loop_factory=) is 3.12+")
def test_asyncio_run_with_loop_factory(impl):
    async def main():
        return type(asyncio.get_running_loop())
    assert issubclass(asyncio.run(main(), loop_factory=impl.new_event_loop),
                      impl.Loop)


def test_event_loop_policy(impl):
    policy = impl.EventLoopPolicy()
    assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
    loop = policy.new_event_loop()
    try:
        assert isinstance(loop, impl.Loop)
    finally:
        loop.close()


def test_install_makes_asyncio_use_impl(impl):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        impl.install()
        try:
            loop = asyncio.new_event_loop()
            try:
                assert isinstance(loop, impl.Loop)
            finally:
                loop.close()

            async def main():
                return type(asyncio.get_running_loop())
            assert issubclass(asyncio.run(main()), impl.Loop)
        finally:
            asyncio.set_event_loop_policy(None)


def test_install_in_fresh_interpreter(impl):
    from conftest import run_python
    r = run_python("""
        import asyncio, warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        IMPL_IMPORT
        impl.install()
        async def main():
            return isinstance(asyncio.get_running_loop(), impl.Loop)
        print(asyncio.run(main()))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True"


SCRIPT = """
import asyncio, sys

async def main():
    loop = asyncio.get_running_loop()
    print(repr(sys.argv))
    print(type(loop).__module__ + "." + type(loop).__qualname__)
    print(__name__)
    return 0

asyncio.run(main())
"""


def test_python_m_ferroloop_runs_script(impl, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    r = subprocess.run(impl.module_cmd(str(script), "a", "b"),
                       capture_output=True, text=True, env=child_env(),
                       timeout=30, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    argv, loop_type, name = r.stdout.strip().splitlines()
    assert eval(argv) == [str(script), "a", "b"]
    expected = impl.Loop.__module__ + "." + impl.Loop.__qualname__
    assert loop_type == expected
    assert name == "__main__"


def test_python_m_ferroloop_script_error_exit_code(impl, tmp_path):
    script = tmp_path / "bad.py"
    script.write_text("import asyncio\n"
                      "async def main():\n    raise SystemExit(3)\n"
                      "asyncio.run(main())\n")
    r = subprocess.run(impl.module_cmd(str(script)), capture_output=True,
                       text=True, env=child_env(), timeout=30)
    assert r.returncode == 3, r.stderr
    script.write_text("raise ValueError('boom')\n")
    r = subprocess.run(impl.module_cmd(str(script)), capture_output=True,
                       text=True, env=child_env(), timeout=30)
    assert r.returncode == 1
    assert "ValueError: boom" in r.stderr


SEED_DIR = os.path.join(REPO_DIR, "..", "shared", "seed")


def seed_programs():
    """The seed document's Python code blocks, joined into one program (its
    examples build on each other), plus the copy kept in examples/."""
    programs = [("examples-dir", open(os.path.join(REPO_DIR, "examples", "seed_example.py")).read())]
    if os.path.isdir(SEED_DIR):
        for name in sorted(os.listdir(SEED_DIR)):
            text = open(os.path.join(SEED_DIR, name)).read()
            blocks = re.findall(r"```python\n(.*?)```", text, re.S)
            if blocks:
                programs.append((f"seed-{name}", "import asyncio\n" + "\n".join(blocks)))
    return programs


@pytest.mark.parametrize("source", [p[1] for p in seed_programs()],
                         ids=[p[0] for p in seed_programs()])
def test_seed_example_prints_done(impl, source, tmp_path):
    path = tmp_path / "seed.py"
    path.write_text(source)
    r = subprocess.run(impl.module_cmd(str(path)), capture_output=True, text=True,
                       env=child_env(), timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "Done"


# ----------------------------------------------------------- task factory

@pytest.mark.uvloop_differs("uvloop always passes context=")
def test_set_get_task_factory(same):
    def scenario(loop, trace):
        trace.append(loop.get_task_factory())

        def factory(lp, coro, **kwargs):
            trace.append(("factory", lp is loop, sorted(kwargs)))
            return asyncio.Task(coro, loop=lp, **kwargs)

        loop.set_task_factory(factory)
        trace.append(loop.get_task_factory() is factory)

        async def work():
            return "r"

        async def main():
            t = loop.create_task(work())
            trace.append(await t)
            t2 = loop.create_task(work(), name="named")
            trace.append((await t2, t2.get_name()))
        loop.run_until_complete(main())
        loop.set_task_factory(None)
        trace.append(loop.get_task_factory())
        trace.append(exc_outcome(loop.set_task_factory, 42))

    t = same(scenario)
    assert t[0] is None and t[1] is True
    assert t[-1] == ("TypeError", "task factory must be a callable or None")


def test_create_task_name_and_context(same):
    var = contextvars.ContextVar("var", default="d")

    def scenario(loop, trace):
        async def read():
            return var.get()

        async def main():
            ctx = contextvars.copy_context()
            ctx.run(var.set, "from-ctx")
            t = loop.create_task(read(), name="my-task")
            trace.append(t.get_name())
            trace.append(await t)
            if sys.version_info >= (3, 11):
                trace.append(await loop.create_task(read(), context=ctx))
        loop.run_until_complete(main())

    t = same(scenario)
    assert t[:2] == ["my-task", "d"]


@pytest.mark.skipif(sys.version_info < (3, 12),
                    reason="eager_task_factory is 3.12+")
def test_eager_task_factory(same):
    def scenario(loop, trace):
        loop.set_task_factory(asyncio.eager_task_factory)

        async def child(n):
            trace.append(("child-start", n))
            await asyncio.sleep(0)
            trace.append(("child-end", n))
            return n

        async def quick():
            trace.append("quick")
            return "q"

        async def main():
            t = asyncio.get_running_loop().create_task(child(1))
            trace.append(("created", t.done()))
            q = asyncio.get_running_loop().create_task(quick())
            trace.append(("quick-done-immediately", q.done()))
            trace.append(await t)
            trace.append(await q)
        loop.run_until_complete(main())

    assert same(scenario) == [
        ("child-start", 1), ("created", False), "quick",
        ("quick-done-immediately", True), ("child-end", 1), 1, "q"]


def test_get_running_loop_and_get_event_loop_inside(same):
    def scenario(loop, trace):
        async def main():
            trace.append(asyncio.get_running_loop() is loop)
            trace.append(asyncio.get_event_loop() is loop)
            trace.append(asyncio.current_task() is not None)
        loop.run_until_complete(main())

    assert same(scenario) == [True, True, True]


def test_create_future_belongs_to_loop(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    fut.cancel()


def test_gather_wait_wait_for_timeouts(same):
    def scenario(loop, trace):
        async def val(v, d):
            await asyncio.sleep(d)
            return v

        async def main():
            trace.append(await asyncio.gather(val(1, 0.002), val(2, 0.001)))
            try:
                await asyncio.wait_for(val(3, 1), 0.01)
            except asyncio.TimeoutError:
                trace.append("timeout")
            done, pending = await asyncio.wait(
                [loop.create_task(val(4, 0.001)),
                 loop.create_task(val(5, 5))], timeout=0.05)
            trace.append((len(done), len(pending)))
            for p in pending:
                p.cancel()
        loop.run_until_complete(main())

    assert same(scenario) == [[1, 2], "timeout", (1, 1)]


def test_sleep_accuracy(loop):
    import time

    async def main():
        t0 = time.monotonic()
        await asyncio.sleep(0.05)
        return time.monotonic() - t0
    dt = loop.run_until_complete(main())
    assert 0.045 <= dt < 0.5


def test_patched_base_loop_methods_are_seen(same):
    """Libraries' tests patch the standard loop's classes (asyncssh patches
    asyncio.BaseEventLoop.create_connection); the methods ferroloop takes
    from the standard loop are looked up there at each access, so the patch
    reaches it as it reaches the standard loop."""
    from unittest import mock

    async def fake_create_connection(self, *args, **kwargs):
        return ("patched", type(self).__name__ == type(loop_seen[0]).__name__)

    loop_seen = []

    async def scenario(loop, trace):
        loop_seen[:] = [loop]
        with mock.patch("asyncio.BaseEventLoop.create_connection", fake_create_connection):
            trace.append(await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1))
        trace.append(asyncio.iscoroutinefunction(loop.create_connection))
        with mock.patch.object(asyncio.BaseEventLoop, "default_exception_handler") as handler:
            loop.call_exception_handler({"message": "seen"})
            trace.append(handler.call_args.args[-1])
        trace.append(type(await loop.getnameinfo(("127.0.0.1", 80), 0)).__name__)
    same(scenario)


def test_every_reused_standard_method_exists(impl):
    # ferroloop.Loop copies the standard loop's methods by name; a name that
    # is missing is a typo, or an API this Python does not have (3.10 has
    # no sock_recvfrom & co.).
    if impl.name != "ferroloop":
        pytest.skip("ferroloop's own wiring")
    missing = impl.Loop._NOT_IN_THIS_PYTHON
    if sys.version_info >= (3, 11):
        assert missing == frozenset()
    else:
        assert missing == {"sock_recvfrom", "_sock_recvfrom", "sock_recvfrom_into",
                           "_sock_recvfrom_into", "sock_sendto", "_sock_sendto"}
