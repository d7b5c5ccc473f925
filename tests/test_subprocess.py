"""Subprocesses: same results as the standard loop, children watched by
pidfd (no thread per child), nothing leaked when the loop closes first."""

import asyncio
import os
import sys
import threading

import pytest


async def _run_children():
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", f"import sys; print('child', {i}); sys.exit({i})",
        stdout=asyncio.subprocess.PIPE) for i in range(4)]
    outs = [await p.communicate() for p in procs]
    shell = await asyncio.create_subprocess_shell(
        "echo shell; exit 7", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await shell.communicate()
    return [o for o, _ in outs], [p.returncode for p in procs], out, shell.returncode


def test_results_match_standard_loop(factories):
    results = {}
    for name, factory in factories.items():
        loop = factory()
        try:
            results[name] = loop.run_until_complete(_run_children())
        finally:
            loop.close()
    assert results["ferroloop"] == results["asyncio"]
    assert results["ferroloop"][1] == [0, 1, 2, 3]


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open")
def test_children_are_watched_without_threads(impl):
    loop = impl.new_event_loop()
    try:
        # Threads left by earlier tests may end meanwhile: look for new ones.
        before = set(threading.enumerate())

        async def main():
            procs = [await asyncio.create_subprocess_exec("sleep", "0.2") for _ in range(3)]
            during = set(threading.enumerate())
            await asyncio.gather(*(p.wait() for p in procs))
            return during - before

        assert loop.run_until_complete(main()) == set()
    finally:
        loop.close()


def test_close_with_running_child_leaks_no_fd(impl):
    fds_before = set(os.listdir("/proc/self/fd"))
    loop = impl.new_event_loop()

    async def start():
        return await asyncio.create_subprocess_exec("sleep", "5")

    proc = loop.run_until_complete(start())
    proc.kill()
    loop.close()
    os.waitpid(proc.pid, 0)
    assert set(os.listdir("/proc/self/fd")) <= fds_before
