"""The accept path of servers, differential: the connections a server
accepts (their socket objects, peer addresses, options), the loop
iterations at which each batch is accepted and each protocol is made, and
what takes asyncio's own path (debug mode, socket subclasses)."""

import asyncio
import os
import socket
import sys
import tempfile

import pytest

from conftest import capture_log


def _ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Made(asyncio.Protocol):
    """Records where each connection stands when connection_made runs."""

    def __init__(self, made):
        self.made = made

    def connection_made(self, transport):
        if not self.made.done():
            self.made.set_result(transport)


def _client(kind, address, tmp):
    """A connected blocking client socket of `kind`."""
    if kind.startswith("tcp"):
        family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
        client = socket.socket(family)
    else:
        client = socket.socket(socket.AF_UNIX)
        if kind == "unix-named":
            client.bind(os.path.join(tmp, "client.sock"))
        elif kind == "unix-abstract":
            client.bind(b"\0ferroloop-accept-test-%d" % os.getpid())
    client.connect(address)
    return client


def _connection_facts(transport, client, kind):
    sock = transport.get_extra_info("socket")
    peername = transport.get_extra_info("peername")
    facts = {
        "peername is the client's name": peername == client.getsockname(),
        "peername type": type(peername).__name__,
        "socket": (sock.family, sock.type, sock.proto),
        "timeout": sock.gettimeout(),
        "fd blocking": os.get_blocking(sock.fileno()),
        "inheritable": os.get_inheritable(sock.fileno()),
        "sockname is the server's": transport.get_extra_info("sockname") == client.getpeername(),
    }
    if kind.startswith("tcp"):
        facts["nodelay"] = bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    return facts


@pytest.mark.parametrize("kind", ["tcp4", "tcp6", "tcp-proto0", "unix-unnamed", "unix-named",
                                  "unix-abstract"])
def test_accepted_connection(same, kind):
    """What create_server hands the protocol for each kind of listener and
    client: peer address format, socket options, non-blocking and
    close-on-exec, TCP_NODELAY (asyncio sets it only when proto is TCP)."""
    if kind == "tcp6" and not _ipv6_loopback():
        pytest.skip("no IPv6 loopback")

    async def scenario(loop, trace):
        with tempfile.TemporaryDirectory() as tmp:
            made = loop.create_future()
            if kind == "tcp-proto0":
                listener = socket.socket()  # proto 0, not IPPROTO_TCP
                listener.bind(("127.0.0.1", 0))
                server = await loop.create_server(lambda: Made(made), sock=listener)
            elif kind.startswith("tcp"):
                host = "::1" if kind == "tcp6" else "127.0.0.1"
                server = await loop.create_server(lambda: Made(made), host, 0)
            else:
                server = await loop.create_unix_server(lambda: Made(made),
                                                       os.path.join(tmp, "server.sock"))
            address = server.sockets[0].getsockname()
            client = _client(kind, address, tmp)
            transport = await made
            trace.append(_connection_facts(transport, client, kind))
            transport.close()
            client.close()
            server.close()
            await server.wait_closed()
    same(scenario)


@pytest.mark.parametrize("backlog", [1, 2, 5])
def test_accept_batches_and_iterations(same, backlog):
    """Connections queued before the loop polls are accepted `backlog` per
    iteration; each protocol is made one iteration after its accept (where
    asyncio's per-connection task takes its first step) and connection_made
    runs one later: the same iterations as asyncio's."""
    async def scenario(loop, trace):
        tick = [0]

        def ticker():
            tick[0] += 1
            if tick[0] < 50:
                loop.call_soon(ticker)

        class Recorder(asyncio.Protocol):
            def __init__(self):
                trace.append(("factory", tick[0]))

            def connection_made(self, transport):
                client_port = transport.get_extra_info("peername")[1]
                trace.append(("made", tick[0], "client", ports.index(client_port)))
                made.append(transport)

        made = []
        server = await loop.create_server(Recorder, "127.0.0.1", 0, backlog=backlog)
        port = server.sockets[0].getsockname()[1]
        clients = []
        # Within the kernel's queue (backlog + 1), connected before the next poll.
        for _ in range(backlog + 1):
            client = socket.socket()
            client.bind(("127.0.0.1", 0))
            client.connect(("127.0.0.1", port))
            clients.append(client)
        ports = [c.getsockname()[1] for c in clients]
        loop.call_soon(ticker)
        while tick[0] < 50:
            await asyncio.sleep(0)
        for t in made:
            t.close()
        for c in clients:
            c.close()
        server.close()
        await server.wait_closed()
    same(scenario)


def test_debug_mode_logs_each_connection(same):
    """Debug mode: asyncio's accept logs every connection."""
    async def scenario(loop, trace):
        made = loop.create_future()
        server = await loop.create_server(lambda: Made(made), "127.0.0.1", 0)
        with capture_log() as log:
            client = socket.create_connection(server.sockets[0].getsockname())
            transport = await made
        trace.append([(r.levelname, r.getMessage().startswith(f"{server!r} got a new connection from "))
                      for r in log.records if "new connection" in r.getMessage()])
        transport.close()
        client.close()
        server.close()
        await server.wait_closed()
    same(scenario, debug=True)


def test_listener_socket_subclass(same):
    """A listening socket of a socket subclass is accepted through its own
    accept() (asyncio's path): the subclass sees every accept."""
    class CountingListener(socket.socket):
        accepts = 0

        def accept(self):
            conn, addr = super().accept()
            CountingListener.accepts += 1
            return conn, addr

    async def scenario(loop, trace):
        CountingListener.accepts = 0
        listener = CountingListener()
        listener.bind(("127.0.0.1", 0))
        made = loop.create_future()
        server = await loop.create_server(lambda: Made(made), sock=listener)
        client = socket.create_connection(listener.getsockname())
        transport = await made
        trace.append((CountingListener.accepts, type(transport.get_extra_info("socket")._sock).__name__))
        transport.close()
        client.close()
        server.close()
        await server.wait_closed()
    same(scenario)


def test_failing_protocol_factory(same):
    """A protocol factory that raises loses that connection silently, as on
    asyncio (which reports it only in debug mode: here the factory turns
    debug mode on before raising), and the server goes on accepting."""
    async def scenario(loop, trace):
        loop.set_exception_handler(lambda lp, ctx: trace.append(
            ("handler", ctx["message"], type(ctx.get("exception")).__name__,
             "protocol" in ctx, "transport" in ctx)))
        made = loop.create_future()
        calls = [0]

        def factory():
            calls[0] += 1
            if calls[0] == 1:
                raise ValueError("quiet")
            if calls[0] == 2:
                loop.set_debug(True)
                raise ValueError("reported")
            return Made(made)

        server = await loop.create_server(factory, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        refused = []
        for _ in range(2):
            refused.append(socket.create_connection(address))
            while calls[0] < len(refused):
                await asyncio.sleep(0)
        loop.set_debug(False)
        client = socket.create_connection(address)
        transport = await made
        trace.append(("third connection made", calls[0]))
        transport.close()
        for c in [client, *refused]:
            c.close()
        server.close()
        await server.wait_closed()
    same(scenario)


def test_protocol_context(same):
    """The protocol factory runs in a copy of the server's context, and what
    it sets there is what the protocol's callbacks see."""
    import contextvars
    var = contextvars.ContextVar("var", default="unset")

    async def scenario(loop, trace):
        done = loop.create_future()

        class Seen(asyncio.Protocol):
            def __init__(self):
                trace.append(("factory", var.get()))
                var.set("set by the factory")

            def connection_made(self, transport):
                trace.append(("made", var.get()))
                self.transport = transport

            def data_received(self, data):
                trace.append(("data", var.get()))
                self.transport.close()
                done.set_result(None)

        var.set("server's")
        server = await loop.create_server(Seen, "127.0.0.1", 0)
        var.set("changed after create_server")
        client = socket.create_connection(server.sockets[0].getsockname())
        client.sendall(b"x")
        await done
        trace.append(("caller", var.get()))
        client.close()
        server.close()
        await server.wait_closed()
    same(scenario)


def test_task_factory_sees_each_connection(same):
    """With a task factory set, each accepted connection is a task the
    factory makes, as on asyncio."""
    async def scenario(loop, trace):
        def factory(loop, coro, **kwargs):
            trace.append(("task", coro.__qualname__.rsplit(".", 1)[-1]))
            return asyncio.Task(coro, loop=loop, **kwargs)

        made = loop.create_future()
        server = await loop.create_server(lambda: Made(made), "127.0.0.1", 0)
        loop.set_task_factory(factory)
        client = socket.create_connection(server.sockets[0].getsockname())
        transport = await made
        loop.set_task_factory(None)
        transport.close()
        client.close()
        server.close()
        await server.wait_closed()
    same(scenario)


@pytest.mark.parametrize("debug_after_accept", [False, True])
def test_tls_handshake_failure_closes_connection(same, debug_after_accept):
    """An incoming TLS connection whose handshake fails is closed where
    asyncio's accept task closes it, and reported only in debug mode."""
    from test.test_asyncio import utils as test_utils

    async def scenario(loop, trace):
        loop.set_exception_handler(lambda lp, ctx: trace.append(
            ("handler", ctx["message"], type(ctx.get("exception")).__name__)))

        class Never(asyncio.Protocol):
            def __init__(self):
                if debug_after_accept:
                    loop.set_debug(True)

            def connection_made(self, transport):
                trace.append("connection_made")

        server = await loop.create_server(Never, "127.0.0.1", 0,
                                          ssl=test_utils.simple_server_sslcontext())
        client = socket.create_connection(server.sockets[0].getsockname())
        client.setblocking(False)
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not a TLS record
        while True:
            try:
                trace.append(("client reads", client.recv(100)))
                break
            except BlockingIOError:
                await asyncio.sleep(0)
        loop.set_debug(False)
        client.close()
        server.close()
        await server.wait_closed()
    with capture_log():
        same(scenario)



def test_socket_methods_replaced_for_a_while(same, monkeypatch):
    """An accepted connection's socket is made by `socket.socket.__init__`,
    wrapped by `TransportSocket.__init__` and closed by `socket.close`:
    replaced by a test, each replacement is called as on asyncio (ferroloop
    does their steps itself only while they are the modules' own), and
    the socket objects are in the same state."""
    import asyncio.trsock
    socket_init, socket_close = socket.socket.__init__, socket.socket.close
    wrapper_init = asyncio.trsock.TransportSocket.__init__

    async def scenario(loop, trace):
        calls, accepted = [], []

        def init(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is not None:
                calls.append("socket.__init__ with a fileno")
            socket_init(self, family, type, proto, fileno)

        def close(self):
            if any(self is s for s in accepted):
                calls.append("close of the accepted socket")
            socket_close(self)

        def wrap(self, sock):
            calls.append("TransportSocket.__init__")
            wrapper_init(self, sock)

        class Proto(asyncio.Protocol):
            def connection_made(self, transport):
                sock = transport._sock
                accepted.append(sock)
                trace.append(("made", type(sock).__name__, sock._io_refs, sock._closed,
                              sock.gettimeout(),
                              type(transport.get_extra_info("socket")).__name__))

            def connection_lost(self, exc):
                lost.set_result(None)

        server = await loop.create_server(Proto, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        for patched in (False, True):
            calls.clear()
            accepted.clear()
            lost = loop.create_future()
            if patched:
                monkeypatch.setattr(socket.socket, "__init__", init)
                monkeypatch.setattr(socket.socket, "close", close)
                monkeypatch.setattr(asyncio.trsock.TransportSocket, "__init__", wrap)
            client = socket.create_connection(address)
            client.close()
            await lost
            monkeypatch.undo()
            sock = accepted[0]
            trace.append(("lost", patched, sock._closed, sock.fileno(), sorted(calls)))
        server.close()
        await server.wait_closed()

    trace = same(scenario)
    assert ("lost", True, True, -1, ["TransportSocket.__init__", "close of the accepted socket",
                                     "socket.__init__ with a fileno"]) in trace


def _collect_garbage(trace):
    """Collect; trace the warnings it gave (their first words)."""
    import gc
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            gc.collect()
    trace.append(("warnings", sorted(str(w.message).split(" ")[0] for w in caught)))


async def _trace_wait_closed(server, trace):
    try:
        await asyncio.wait_for(server.wait_closed(), 1)
        trace.append("wait_closed returned")
    except asyncio.TimeoutError:
        trace.append("wait_closed still waiting")


def test_server_closed_while_connections_wait_to_open(same):
    """Connections accepted in one batch whose protocol factory closes the
    server: each transport's `Server._attach` then fails (the server has no
    sockets), as on asyncio. What the clients see, the server's count of
    connections, what the collector finds and reports, and `wait_closed`."""
    import gc
    import sys

    async def scenario(loop, trace):
        unraisable = []
        server = None

        def factory():
            server.close()
            return asyncio.Protocol()

        gc.collect()  # (what earlier tests left is not this test's)
        server = await loop.create_server(factory, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        clients = [socket.create_connection(address) for _ in range(2)]
        for _ in range(5):
            await asyncio.sleep(0)
        old_hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
        try:
            _collect_garbage(trace)
        finally:
            sys.unraisablehook = old_hook
        trace.append(("unraisable", [type(u.exc_value).__name__ for u in unraisable]))
        count = getattr(server, "_active_count", None)
        clients_left = len(getattr(server, "_clients", ()) or ())
        trace.append(("server count", count, clients_left))
        for c in clients:
            c.settimeout(5)
            trace.append(("client reads", c.recv(10)))
            c.close()
        await _trace_wait_closed(server, trace)
    same(scenario)


def test_connection_collected_unclosed_leaves_its_server(factories):
    """A server-side transport collected unclosed (its protocol dropped it,
    and it was not reading) warns, closes its socket and leaves its server,
    so `wait_closed` returns: as asyncio 3.13 does, and as 3.10 and 3.11 end (their
    `wait_closed` does not wait for connections). asyncio 3.12's `__del__`
    does not leave the server, whose `wait_closed` then waits forever;
    ferroloop does not reproduce that hang."""
    import gc
    import sys
    from conftest import run_on

    async def scenario(loop, trace):
        made = loop.create_future()

        class Forgetful(asyncio.Protocol):
            def connection_made(self, transport):
                # Not reading, the loop holds no reference to it either.
                # (Once reading: 3.10 starts reading after connection_made
                # even when it paused.)
                loop.call_soon(transport.pause_reading)
                loop.call_soon(made.set_result, None)

        gc.collect()  # (what earlier tests left is not this test's)
        server = await loop.create_server(Forgetful, "127.0.0.1", 0)
        client = socket.create_connection(server.sockets[0].getsockname())
        await made
        for _ in range(3):  # (asyncio's accept task lets go of it)
            await asyncio.sleep(0)
        _collect_garbage(trace)
        client.settimeout(5)
        trace.append(("client reads", client.recv(10)))
        client.close()
        server.close()
        await _trace_wait_closed(server, trace)

    got = run_on(factories["ferroloop"], scenario)
    expected = run_on(factories["asyncio"], scenario)
    assert got[-1] == "wait_closed returned"
    if sys.version_info[:2] == (3, 12):
        assert expected[-1] == "wait_closed still waiting"
        expected[-1] = got[-1]
    assert got == expected


def test_peer_hosts_of_several_clients(same):
    """Peer addresses from several IPv4 hosts, some of which differ only
    above the bits ferroloop keeps their text by (127.0.0.1 and .9): each
    connection's peername and sockname are its own."""
    hosts = ["127.0.0.1", "127.0.0.9", "127.0.0.2", "127.0.0.1", "127.0.0.17", "127.0.0.9"]

    async def scenario(loop, trace):
        made = asyncio.Queue()

        class Proto(asyncio.Protocol):
            def connection_made(self, transport):
                made.put_nowait(transport)

        server = await loop.create_server(Proto, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        clients = []
        for host in hosts:
            client = socket.create_connection(address, source_address=(host, 0))
            clients.append(client)
            transport = await made.get()
            peer = transport.get_extra_info("peername")
            trace.append((peer[0], peer == client.getsockname(),
                          transport.get_extra_info("sockname") == client.getpeername()))
            transport.close()
        for client in clients:
            client.close()
        server.close()
        await server.wait_closed()

    trace = same(scenario)
    assert [t[0] for t in trace] == hosts


def _record_calls(monkeypatch, cls, names, calls, mine=lambda self: True):
    """Replace `cls`'s methods `names` by ones that note their name in
    `calls` (when `mine(self)`), then call the original."""
    def recording(name, original):
        def method(self, *args, **kwargs):
            if mine(self):
                calls.append(name)
            return original(self, *args, **kwargs)
        return method
    for name in names:
        monkeypatch.setattr(cls, name, recording(name, getattr(cls, name)))


async def _connections_while_replaced(loop, monkeypatch, replace, state):
    """A new server's connections, made and lost one after another, the
    second while `replace(server)` has replaced some methods. Returns the
    server, for each `(replaced, state(server) while open, after)`, and a
    function that gives the future the next connection_lost sets."""
    lost = None

    def next_lost():
        nonlocal lost
        lost = loop.create_future()
        return lost

    class Proto(asyncio.Protocol):
        def connection_lost(self, exc):
            lost.set_result(None)

    server = await loop.create_server(Proto, "127.0.0.1", 0)
    address = server.sockets[0].getsockname()
    states = []
    for replaced in (False, True, False):
        next_lost()
        if replaced:
            replace(server)
        client = socket.create_connection(address)
        await asyncio.sleep(0.05)
        opened = state(server)
        client.close()
        await lost
        monkeypatch.undo()
        states.append((replaced, opened, state(server)))
    return server, states, next_lost


def test_server_methods_replaced_for_a_while(same, monkeypatch):
    """A connection joins its server by `Server._attach` and leaves by
    `_detach`: replaced by a test, each replacement is called as on
    asyncio (ferroloop does their steps itself only while they are
    asyncio's own), and the server's count is the same."""
    from asyncio import base_events

    async def scenario(loop, trace):
        calls = []

        def count(server):
            return (calls[:], getattr(server, "_active_count", None),
                    len(getattr(server, "_clients", ()) or ()))

        def replace(server):
            calls.clear()
            _record_calls(monkeypatch, base_events.Server, ["_attach", "_detach"], calls)

        server, states, _ = await _connections_while_replaced(loop, monkeypatch, replace, count)
        trace.extend(states)
        server.close()
        await _trace_wait_closed(server, trace)

    trace = same(scenario)
    assert trace[1][2][0] == ["_attach", "_detach"]


def test_transport_factory_replaced_for_a_while(same, monkeypatch):
    """A loop class whose `_make_socket_transport` a test replaced makes
    accepted connections' transports with the replacement, as asyncio's
    does (ferroloop accepts and opens connections by itself only while
    that method is its own), and with its own again once it is restored."""
    async def scenario(loop, trace):
        calls = []

        def replace(server):
            calls.clear()
            _record_calls(monkeypatch, type(loop), ["_make_socket_transport"], calls)

        server, states, _ = await _connections_while_replaced(loop, monkeypatch, replace,
                                                              lambda server: calls[:])
        trace.extend(states)
        server.close()
        await _trace_wait_closed(server, trace)

    trace = same(scenario)
    assert trace[1] == (True, ["_make_socket_transport"], ["_make_socket_transport"])


def test_each_loop_registers_its_own_transports(same):
    """Two loops making connections in turn: each transport is in its own
    loop's `_transports` (which add_reader and sock_* check), never in the
    other's."""
    def scenario(loop, trace):
        other = type(loop)()
        opened = []

        async def connect(lp):
            made = lp.create_future()
            server = await lp.create_server(lambda: Made(made), "127.0.0.1", 0)
            client = socket.create_connection(server.sockets[0].getsockname())
            opened.append((lp, server, client, await made))

        try:
            for lp in (loop, other, loop, other, loop):
                lp.run_until_complete(connect(lp))
            for lp, server, client, transport in opened:
                fd = transport.get_extra_info("socket").fileno()
                elsewhere = other if lp is loop else loop
                trace.append((lp is loop, lp._transports.get(fd) is transport,
                              elsewhere._transports.get(fd) is transport))
            for lp, server, client, transport in opened:
                transport.close()
                client.close()
                server.close()
                lp.run_until_complete(server.wait_closed())
        finally:
            other.close()

    trace = same(scenario)
    assert all(mine and not theirs for _, mine, theirs in trace)


@pytest.mark.skipif(sys.version_info < (3, 13), reason="Server._clients is new in 3.13")
def test_client_set_methods_replaced_for_a_while(same, monkeypatch):
    """From 3.13 a server keeps its connections in a `weakref.WeakSet`:
    replaced by a test, its `add` and `discard` are called as on asyncio
    (ferroloop does their steps itself only while they are the class's),
    and `close_clients` finds the same connections."""
    import weakref

    async def scenario(loop, trace):
        calls = []

        def clients(server):
            return calls[:], len(server._clients)

        def replace(server):
            calls.clear()
            _record_calls(monkeypatch, weakref.WeakSet, ["add", "discard"], calls,
                          mine=lambda self: self is server._clients)

        server, states, next_lost = await _connections_while_replaced(loop, monkeypatch, replace, clients)
        trace.extend(states)
        lost = next_lost()
        client = socket.create_connection(server.sockets[0].getsockname())
        await asyncio.sleep(0.05)
        server.close()
        server.close_clients()
        await lost
        client.settimeout(5)
        trace.append(("closed by the server", client.recv(10)))
        client.close()
        await _trace_wait_closed(server, trace)

    trace = same(scenario)
    assert trace[1][2] == (["add", "discard"], 0)
