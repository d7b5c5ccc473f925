"""Hypothesis-driven differential fuzzing of the asyncio `Server` lifecycle.

Random programs run on ferroloop and on the standard loop; the traces must be
equal. A program makes a TCP server (one socket, or an IPv4 and an IPv6 one)
or a Unix server: loop.create_server/create_unix_server with a recording
protocol, or asyncio.start_server/start_unix_server with a handler that reads
until EOF; start_serving True or False; inside `async with server` or not.
Then server operations (close, twice; wait_closed and serve_forever as tasks
whose outcomes go in the trace when done; serve_forever cancelled;
is_serving; start_serving, also after close; sockets (count, families);
get_loop; 3.13+: close_clients/abort_clients) mix with the actions of up to 3
plain-socket clients (connect, send, shutdown, close, reset; the server side
replies, the client reads). At the end the clients close one by one, the
server closes, and wait_closed() finishes or times out as on the standard
loop. test_edge_cases pins a few lifecycle cases as plain scenarios.

Determinism: a program records only what asyncio guarantees.
  * One client acts per step. After each step the loop runs until what is
    due has happened (ServerRun.busy): connections are accepted one at a
    time, so in connection order; the bytes received are compared per step,
    not the chunks; a client does not send to a server side that is gone
    (when the kernel resets it is timing).
  * close_clients()/abort_clients() close the transports in the order of a
    WeakSet: the entries of those steps are compared sorted.
  * Addresses, ports, paths and reprs are replaced by names.

No ferroloop difference was found so far; one found later belongs in the
programs as a skip and here as a strict xfail (fuzz_support.known()).

Hunting: FUZZ_EXAMPLES=2000 FUZZ_RANDOM=1 FERROLOOP_TEST_TIMEOUT=3000.
"""

import asyncio
import os
import select
import socket
import struct
import sys
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fuzz_support
from conftest import outcome
from fuzz_support import (
    SETTINGS, Payload, Program, case, digest, examples, norm_message, record_handler, record_log,
    spin, wait_until)

PY313 = sys.version_info >= (3, 13)
payload = Payload(seed=2024)
SHORT = 0.05            # timeouts of waits that may not finish
MAX_CLIENTS = 3
SENT_MAX = 40 * 1024    # bytes a client may send (its server side may not be reading)


def has_ipv6():
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# the hosts of a "tcp2" server: two sockets where IPv6 works
TCP2_HOSTS = ["127.0.0.1", "::1"] if has_ipv6() else "127.0.0.1"


def check_same(scenario):
    """fuzz_support.check_same; the program must run through on the standard loop."""
    return fuzz_support.check_same(scenario, stdlib_must_finish=True)


class Client:
    """A plain socket connected to the server: its state (open, shut,
    closed), bytes sent, bytes its server side replied and it read; its
    server side (`conn`)."""

    def __init__(self, sock):
        self.sock, self.state, self.sent, self.replied, self.got, self.conn = sock, "open", 0, 0, 0, None


class Conn:
    """The server side of a connection: the number of its client, what
    replies are written to (a transport or a StreamWriter), the bytes it
    received (and had in the trace); done: connection_lost (protocol) or the
    handler finished (streams); due_lost: close_clients/abort_clients."""

    def __init__(self, client, transport):
        self.client, self.transport, self.data, self.shown = client, transport, bytearray(), 0
        self.done = self.due_lost = False


class ServerProto(asyncio.Protocol):
    def __init__(self, run):
        self.run = run

    def connection_made(self, transport):
        self.conn = self.run.accepted(transport)

    def data_received(self, data):
        self.conn.data += data

    def eof_received(self):
        self.run.trace.append(("eof", self.conn.client, len(self.conn.data)))

    def connection_lost(self, exc):
        self.run.trace.append(("lost", self.conn.client, type(exc).__name__ if exc else None))
        self.conn.done = True


class ServerRun(Program):
    """Interprets a server program with its clients."""

    fields = ("family", "api", "start", "ctx")
    settle_timeout = 1.0

    def __init__(self, loop, trace, program, tmp):
        super().__init__(loop, trace, program)
        self.tmp = tmp
        self.clients, self.conns, self.tasks, self.forever = [], [], [], []

    def exc(self, e):
        return (type(e).__name__, norm_message(str(e).replace(self.tmp, "TMP")))

    # ---------------------------------------------------------- the server
    def accepted(self, transport):
        """The server side of the first client not accepted yet."""
        client = next((c for c in self.clients if c.conn is None), None)
        conn = Conn(self.clients.index(client) if client else "?", transport)
        if client:
            client.conn = conn
        self.conns.append(conn)
        self.trace.append(("made", conn.client))
        return conn

    async def handler(self, reader, writer):
        conn = self.accepted(writer)
        try:
            while data := await reader.read(65536):
                conn.data += data
            self.trace.append(("handler eof", conn.client, len(conn.data)))
        except Exception as e:
            self.trace.append(("handler read", conn.client, type(e).__name__))
        writer.close()
        try:
            await writer.wait_closed()
            self.trace.append(("handler closed", conn.client))
        except Exception as e:
            self.trace.append(("handler closed", conn.client, type(e).__name__))
        conn.done = True

    async def open(self):
        kw = dict(start_serving=self.start)
        where = dict(path=os.path.join(self.tmp, "srv")) if self.family == "unix" else \
            dict(host="127.0.0.1" if self.family == "tcp" else TCP2_HOSTS, port=0)
        if self.api == "loop":
            make = self.loop.create_unix_server if self.family == "unix" else self.loop.create_server
            self.server = await make(lambda: ServerProto(self), **where, **kw)
        else:
            make = asyncio.start_unix_server if self.family == "unix" else asyncio.start_server
            self.server = await make(self.handler, **where, **kw)
        self.address = self.server.sockets[0].getsockname()
        self.trace.append(("server", self.server.is_serving(), self.sockets()))

    def sockets(self):
        socks = self.server.sockets
        return len(socks), sorted(s.family.name for s in socks)

    # ---------------------------------------------------------- settling
    def busy(self):
        """A client connected to a serving server is not accepted yet; a
        server side has not received what its client sent, not written its
        replies out, or not ended after its client's EOF or reset or its
        server's close_clients()/abort_clients()."""
        if self.server.is_serving() and any(c.conn is None for c in self.clients):
            return True
        for c in self.clients:
            conn = c.conn
            if conn is None or conn.done:
                continue
            transport = conn.transport.transport if self.api == "streams" else conn.transport
            if c.state != "open" or conn.due_lost or len(conn.data) < c.sent or \
                    transport.get_write_buffer_size():
                return True
        return False

    async def settle(self):
        await super().settle()
        for conn in self.conns:
            if len(conn.data) != conn.shown:
                conn.shown = len(conn.data)
                self.trace.append(("received", conn.client, digest(conn.data)))

    # ---------------------------------------------------------- clients
    async def connect(self):
        fam = {str: socket.AF_UNIX, 2: socket.AF_INET, 4: socket.AF_INET6}
        sock = socket.socket(fam[str] if isinstance(self.address, str) else fam[len(self.address)])
        sock.settimeout(1.0)
        try:
            sock.connect(self.address)
        except OSError as e:
            sock.close()
            return type(e).__name__
        sock.setblocking(False)
        self.clients.append(Client(sock))
        return ("client", len(self.clients) - 1)

    def client_op(self, name, c):
        if name == "send":
            if (c.conn and c.conn.done) or c.state == "shut" or c.sent >= SENT_MAX:
                return "skip"    # to a closed server side: when the kernel resets it is timing
            data = payload(c.sent, 5000)
            c.sock.sendall(data)
            c.sent += len(data)
            return "ok"
        if name == "shut":
            if c.state == "shut":
                return "skip"
            c.state = "shut"
            return outcome(c.sock.shutdown, socket.SHUT_WR)[0]
        if name == "reply":
            if c.conn is None or c.conn.done or c.replied >= SENT_MAX:
                return "skip"
            c.conn.transport.write(payload(c.replied, 3000))
            c.replied += 3000
            return "ok"
        if name == "read":
            return self.client_read(c)
        if name == "reset" and self.family != "unix":
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.sock.close()
        c.state = "closed"
        return "ok"

    def client_read(self, c):
        """What the client can read: all its server side wrote (waiting
        for it), then EOF if its server side is done; (bytes, end)."""
        eof_due = c.conn is not None and c.conn.done
        p = select.poll()
        p.register(c.sock.fileno(), select.POLLIN)
        out = bytearray()
        while p.poll(200 if c.got + len(out) < c.replied or eof_due else 0):
            try:
                data = c.sock.recv(65536)
            except OSError as e:
                return digest(out), type(e).__name__
            if not data:
                c.got += len(out)
                return digest(out), "eof"
            out += data
        c.got += len(out)
        return digest(out), "open"

    # ---------------------------------------------------------- steps
    async def step(self, op):
        name, mark = op[0], len(self.trace)
        srv = self.server
        if name == "connect":
            r = await self.connect() if len(self.clients) < MAX_CLIENTS else "skip"
            self.trace.append((op, r))
        elif name in ("send", "shut", "close", "reset", "read", "reply"):
            live = [i for i, c in enumerate(self.clients) if c.state != "closed"]
            i = live[op[1] % len(live)] if live else None   # the op's number picks an open client
            self.trace.append(((name, i), self.client_op(name, self.clients[i]) if live else "skip"))
        elif name == "close_server":
            self.trace.append((op, outcome(srv.close)))
        elif name in ("close_clients", "abort_clients"):
            for conn in self.conns:
                conn.due_lost = True
            self.trace.append((op, outcome(getattr(srv, name))))
        elif name == "wait_closed":
            self.trace.append((op, "started"))
            self.task(("wait_closed", len(self.tasks)), srv.wait_closed())
        elif name == "serve_forever":
            self.trace.append((op, "started"))
            self.forever.append(self.task(("serve_forever", len(self.forever)), srv.serve_forever()))
        elif name == "cancel_forever":
            self.trace.append((op, self.forever[-1].cancel() if self.forever else "skip"))
        elif name == "start_serving":
            try:
                self.trace.append((op, "ok", await srv.start_serving()))
            except Exception as e:
                self.trace.append((op,) + self.exc(e))
        elif name == "is_serving":
            self.trace.append((op, srv.is_serving()))
        elif name == "sockets":
            self.trace.append((op, self.sockets()))
        elif name == "get_loop":
            self.trace.append((op, srv.get_loop() is self.loop))
        elif name == "spin":
            await spin(3)
        await self.settle()
        if name in ("close_clients", "abort_clients"):
            self.trace[mark:] = sorted(self.trace[mark:], key=repr)

    def task(self, label, coro):
        """A task whose outcome goes in the trace when it is done."""
        t = self.loop.create_task(coro)
        t.add_done_callback(lambda t: self.trace.append(
            ("done", label) + (("cancelled",) if t.cancelled() else self.exc(t.exception()) if t.exception()
                               else ("ok",))))
        self.tasks.append(t)
        return t

    async def __call__(self):
        await self.open()
        if self.ctx:
            self.trace.append(("aenter", await self.server.__aenter__() is self.server))
        await self.run_ops()
        if self.ctx:
            self.trace.append(("aexit", await self.wait_for(self.server.__aexit__(None, None, None))))
            await self.settle()
        self.trace.append("end")
        for i, c in enumerate(self.clients):
            if c.state != "closed":
                self.trace.append((("close", i), self.client_op("close", c)))
                await self.settle()
        await self.step(("close_server",))
        self.trace.append(("final wait_closed", await self.wait_for(self.server.wait_closed(), 1.0)))
        for t in self.tasks:
            t.cancel()
        await spin()

    async def wait_for(self, coro, timeout=SHORT):
        try:
            await asyncio.wait_for(coro, timeout)
        except Exception as e:
            return type(e).__name__
        return "ok"


SERVER_OPS = ["close_server", "wait_closed", "serve_forever", "cancel_forever", "start_serving",
              "is_serving", "sockets", "get_loop", "spin"] + (["close_clients", "abort_clients"] if PY313 else [])


@st.composite
def server_programs(draw):
    client = st.tuples(st.sampled_from(["send", "send", "shut", "close", "reset", "read", "reply"]),
                       st.integers(0, MAX_CLIENTS - 1))
    op = st.one_of(st.just(("connect",)), client, client, st.sampled_from(SERVER_OPS).map(lambda n: (n,)))
    return dict(family=draw(st.sampled_from(["tcp", "unix", "tcp2"])), api=draw(st.sampled_from(["loop", "streams"])),
                start=draw(st.sampled_from([True, True, False])), ctx=draw(st.booleans()),
                ops=draw(st.lists(op, max_size=16)))


def program_scenario(program):
    async def scenario(loop, trace):
        record_handler(loop, trace)
        with record_log(trace), tempfile.TemporaryDirectory() as tmp:
            await ServerRun(loop, trace, program, tmp)()
    return scenario


@settings(max_examples=examples(300), **SETTINGS)
@given(program=server_programs())
def test_server_programs(impl, program):
    """Server lifecycle under random programs: same callbacks, same
    outcomes, same order."""
    check_same(program_scenario(program))


# ============================================================== edge cases

async def tcp_server(loop, trace, **kw):
    """A TCP server whose connections' callbacks go in the trace; its
    address; the list of its transports."""
    transports = []

    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            trace.append("made")
            transports.append(transport)

        def connection_lost(self, exc):
            trace.append(("lost", type(exc).__name__ if exc else None))
    server = await loop.create_server(Proto, "127.0.0.1", 0, **kw)
    return server, server.sockets[0].getsockname(), transports


async def connected(addr, transports):
    """A client socket, once the server made its connection."""
    sock = socket.create_connection(addr, timeout=1.0)
    sock.setblocking(False)
    n = len(transports)
    assert await wait_until(lambda: len(transports) > n, 1.0)
    return sock


async def lifecycle_misuse(loop, trace):
    """A second close(); start_serving() and serve_forever() after close();
    serve_forever() twice; wait_closed() before close()."""
    server, _, _ = await tcp_server(loop, trace, start_serving=False)
    waiting = loop.create_task(server.wait_closed())
    forever = loop.create_task(server.serve_forever())
    await spin()
    second = loop.create_task(server.serve_forever())
    await spin()
    trace.append(("second serve_forever", norm_message(str(second.exception()))))
    trace.append(("waiting, serving", waiting.done(), server.is_serving(), forever.done()))
    trace.append(("close", outcome(server.close), outcome(server.close)))
    await spin()
    trace.append(("after close", waiting.done(), forever.cancelled(), server.is_serving(), server.sockets))
    for coro in (server.start_serving(), server.serve_forever()):
        try:
            trace.append(("ok", await coro))
        except Exception as e:
            trace.append((type(e).__name__, norm_message(str(e))))
    await server.wait_closed()


async def close_before_accept(loop, trace):
    """A client connects and the server closes before the loop accepts:
    the connection is never made, the client is reset."""
    server, addr, _ = await tcp_server(loop, trace)
    sock = socket.create_connection(addr, timeout=1.0)
    server.close()
    await spin()
    trace.append(("client", outcome(sock.recv, 10)[0]))
    sock.close()
    await asyncio.wait_for(server.wait_closed(), 1.0)


async def clients_closed_by_server(loop, trace):
    """close_clients() flushes what its transports buffered, abort_clients()
    drops it (what the kernel took still arrives, then EOF)."""
    big = 16 * 1024 * 1024
    for how in ("close_clients", "abort_clients"):
        server, addr, transports = await tcp_server(loop, trace)
        sock = await connected(addr, transports)
        transports[0].write(b"x" * big)
        trace.append((how, transports[0].get_write_buffer_size() > 0, outcome(getattr(server, how))))
        got = 0
        while data := await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 1.0):
            got += len(data)
        trace.append((how, "all" if got == big else "less" if got < big else got))
        sock.close()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 1.0)


@pytest.mark.parametrize("scenario", [
    case("lifecycle_misuse", lifecycle_misuse),
    case("close_before_accept", close_before_accept),
    case("clients_closed_by_server", clients_closed_by_server, since=(3, 13)),
])
def test_edge_cases(impl, scenario):
    check_same(scenario)
