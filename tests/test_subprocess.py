"""Subprocesses: same results as the standard loop, children watched by
pidfd (no thread per child), nothing leaked when the loop closes first."""

import asyncio
import contextvars
import os
import signal
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


def _on_each_loop(factories, main):
    """{loop name: what main() returned on a fresh loop of that kind}. Each
    run gets a fresh policy: a child watcher an earlier test left on the
    policy would decide how exits are watched (3.10/3.11)."""
    results = {}
    for name, factory in factories.items():
        asyncio.set_event_loop_policy(None)
        loop = factory()
        try:
            results[name] = loop.run_until_complete(main())
        finally:
            loop.close()
    return results


def test_results_match_standard_loop(factories):
    results = _on_each_loop(factories, _run_children)
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


async def _callback_contexts():
    cvar = contextvars.ContextVar("cvar", default="outer")
    done = asyncio.get_running_loop().create_future()
    seen = set()

    class Protocol(asyncio.SubprocessProtocol):
        def connection_made(self, transport):
            seen.add(("connection_made", cvar.get()))

        def pipe_data_received(self, fd, data):
            seen.add(("pipe_data_received", fd, cvar.get()))

        def pipe_connection_lost(self, fd, exc):
            seen.add(("pipe_connection_lost", fd, cvar.get()))

        def process_exited(self):
            seen.add(("process_exited", cvar.get()))

        def connection_lost(self, exc):
            # Its context is the one of whichever came last, the exit or
            # the last pipe's loss: timing, on either loop.
            seen.add(("connection_lost",))
            done.set_result(None)

    cvar.set("inner")
    transport, _ = await asyncio.get_running_loop().subprocess_exec(
        Protocol, sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read())")
    transport.get_pipe_transport(0).write(b"data")
    transport.get_pipe_transport(0).write_eof()
    await done
    transport.close()
    return sorted(seen, key=str)


def test_protocol_callback_contexts(factories):
    # 3.10/3.11's default child watcher reports the exit from its thread, so
    # process_exited() and connection_lost() see that thread's empty context;
    # 3.12+ watches a pidfd from the caller's context.
    results = _on_each_loop(factories, _callback_contexts)
    assert results["ferroloop"] == results["asyncio"]
    assert ("process_exited", "outer" if sys.version_info < (3, 12) else "inner") in results["ferroloop"]


async def _fork_while_running(factory):
    """Fork inside a running loop (a server that forks workers): the child
    runs a loop of its own, with a connection to the parent's server and a
    subprocess; the parent's server and signal handler keep working."""
    async def echo(reader, writer):
        writer.write(b"echo:" + await reader.readline())
        await writer.drain()
        writer.close()

    async def exchange(addr, line):
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(line)
        reply = await reader.readline()
        writer.close()
        await writer.wait_closed()
        return reply

    async def in_child(addr):
        proc = await asyncio.create_subprocess_exec("echo", "grandchild", stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        return await exchange(addr, b"child\n") + out

    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    addr = server.sockets[0].getsockname()
    signals = []
    loop.add_signal_handler(signal.SIGUSR1, signals.append, "usr1")
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(rfd)
            # 3.12+ forget the running loop at fork; 3.10/3.11 do not.
            asyncio.events._set_running_loop(None)
            child_loop = factory()
            os.write(wfd, child_loop.run_until_complete(in_child(addr)))
            child_loop.close()
            status = 0
        finally:
            os._exit(status)
    os.close(wfd)
    reader = asyncio.StreamReader()
    pipe, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(rfd, "rb"))
    try:
        from_child = await asyncio.wait_for(reader.read(), 30)
    except asyncio.TimeoutError:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        pipe.close()
    _, status = os.waitpid(pid, 0)  # (its pipe is closed: it is exiting)
    os.kill(os.getpid(), signal.SIGUSR1)
    from_parent = await exchange(addr, b"parent\n")
    await asyncio.sleep(0.05)
    loop.remove_signal_handler(signal.SIGUSR1)
    server.close()
    await server.wait_closed()
    return os.waitstatus_to_exitcode(status), from_child, from_parent, signals


# (the test harness's own watchdog thread makes 3.12+ warn about any fork)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_while_running(factories):
    results = {}
    for name, factory in factories.items():
        results.update(_on_each_loop({name: factory}, lambda: _fork_while_running(factory)))
    assert results["ferroloop"] == results["asyncio"]
    assert results["ferroloop"] == (0, b"echo:child\ngrandchild\n", b"echo:parent\n", ["usr1"])
