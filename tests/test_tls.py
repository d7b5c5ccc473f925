"""TLS (create_server/create_connection with ssl=, start_tls, streams),
differential: the same scenario on ferroloop and on the standard loop must
give the same callbacks in the same order, the same data, extra info,
exceptions and log messages."""

import asyncio
import gc
import socket
import ssl
import sys
import threading
import weakref

import pytest
from test.test_asyncio import utils as test_utils

from conftest import capture_log, counting_socket_class, outcome


def server_context(**kw):
    ctx = test_utils.simple_server_sslcontext()
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def client_context():
    return test_utils.simple_client_sslcontext()


def verifying_client_context():
    ctx = ssl.create_default_context(cafile=test_utils.SIGNING_CA)
    return ctx


class Recorder(asyncio.Protocol):
    """Records callbacks; joins received data; echoes if asked."""

    def __init__(self, trace, name, echo=False):
        self.trace, self.name, self.echo = trace, name, echo
        self.data = bytearray()
        self.lost = asyncio.get_running_loop().create_future()
        self.got_data = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.trace.append((self.name, "made", isinstance(transport, asyncio.Transport)))

    def data_received(self, data):
        assert isinstance(data, bytes)
        self.data += data
        if self.echo:
            self.transport.write(data)
        if not self.got_data.done():
            self.got_data.set_result(None)

    def eof_received(self):
        self.trace.append((self.name, "eof", len(self.data)))

    def pause_writing(self):
        self.trace.append((self.name, "pause_writing"))

    def resume_writing(self):
        self.trace.append((self.name, "resume_writing"))

    def connection_lost(self, exc):
        self.trace.append((self.name, "lost", type(exc).__name__ if exc else None))
        self.lost.set_result(None)


async def _pair(loop, trace, *, server_echo=True, sctx=None, cctx=None, **kw):
    """A TLS server on the loop and a client connected to it."""
    servers = []

    def make_server():
        p = Recorder(trace, "server", echo=server_echo)
        servers.append(p)
        return p

    srv = await loop.create_server(make_server, "127.0.0.1", 0, ssl=sctx or server_context())
    port = srv.sockets[0].getsockname()[1]
    tr, client = await loop.create_connection(lambda: Recorder(trace, "client"), "127.0.0.1", port,
                                              ssl=cctx or client_context(), **kw)
    while not (servers and hasattr(servers[0], "transport")):
        await asyncio.sleep(0.001)
    return srv, tr, client, servers[0]


async def _close(tr, client, server, srv):
    """Close the client's transport; wait until both ends are lost and the
    server is closed."""
    tr.close()
    await client.lost
    await server.lost
    srv.close()
    await srv.wait_closed()


async def _echo(tr, client, trace, sizes):
    """Send a payload of each size; trace whether the echo came back whole."""
    for size in sizes:
        payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        client.data.clear()
        tr.write(payload)
        while len(client.data) < size:
            await asyncio.sleep(0.001)
        trace.append(("echoed", size, bytes(client.data) == payload))


def test_echo_order_data_and_extra_info(same):
    async def scenario(loop, trace):
        srv, tr, client, server = await _pair(loop, trace, server_hostname="")
        await _echo(tr, client, trace, (1, 1000, 16384, 16385, 100_000, 1_000_000))
        sslobj = tr.get_extra_info("ssl_object")
        trace.append(("extra", type(sslobj).__name__, tr.get_extra_info("cipher")[1],
                      tr.get_extra_info("peercert"), tr.get_extra_info("compression"),
                      type(tr.get_extra_info("socket")).__name__,
                      tr.get_extra_info("sslcontext") is not None,
                      tr.get_extra_info("nonexistent", "default")))
        trace.append(("transport", isinstance(tr, asyncio.sslproto._SSLProtocolTransport),
                      tr.is_reading(), tr.get_write_buffer_limits(), tr.can_write_eof()))
        tr.close()
        trace.append(("closing", tr.is_closing()))
        await client.lost
        await server.lost
        srv.close()
        await srv.wait_closed()

    trace = same(scenario)
    assert ("echoed", 1_000_000, True) in trace and ("client", "lost", None) in trace


def test_debug_mode_logs_the_same(same):
    """Debug mode: the handshake and EOF debug logs (their messages, without
    the reprs and timings in them) and the callbacks are asyncio's."""
    async def scenario(loop, trace):
        with capture_log() as log:
            srv, tr, client, server = await _pair(loop, trace)
            tr.write(b"debug")
            await client.got_data
            await _close(tr, client, server, srv)
        trace.append(sorted({r.msg for r in log.records if "SSL" in r.msg or "EOF" in r.msg}))

    trace = same(scenario, debug=True)
    assert any("SSL handshake" in m for m in trace[-1])


def test_close_flushes_then_close_notify(same):
    """Everything written before close() arrives; the peer sees EOF."""
    async def scenario(loop, trace):
        srv, tr, client, server = await _pair(loop, trace, server_echo=False)
        payload = b"z" * 3_000_000
        tr.write(payload)
        tr.close()
        await client.lost
        await server.lost
        trace.append(("server got", len(server.data), bytes(server.data) == payload))
        srv.close()
        await srv.wait_closed()

    trace = same(scenario)
    assert ("server got", 3_000_000, True) in trace


def test_abort_is_immediate(same):
    async def scenario(loop, trace):
        srv, tr, client, server = await _pair(loop, trace, server_echo=False)
        tr.write(b"a" * 100_000)
        tr.abort()
        trace.append(("closing", tr.is_closing()))
        await client.lost
        await server.lost
        srv.close()
        await srv.wait_closed()

    same(scenario)


def test_write_checks_and_writes_after_close(same):
    async def scenario(loop, trace):
        srv, tr, client, server = await _pair(loop, trace)
        trace.append(outcome(tr.write, "text"))
        trace.append(outcome(tr.write, 12))
        trace.append(outcome(tr.write, b""))
        trace.append(outcome(tr.write, bytearray(b"ba")))
        trace.append(outcome(tr.write, memoryview(b"mv")))
        trace.append(outcome(tr.writelines, [b"a", bytearray(b"b"), memoryview(b"c")]))
        trace.append(outcome(tr.write_eof))
        while len(client.data) < 7:
            await asyncio.sleep(0.001)
        trace.append(bytes(client.data))
        tr.close()
        with capture_log() as log:
            for _ in range(7):
                trace.append(outcome(tr.write, b"late"))
        trace.append(log.summary())
        await client.lost
        # A second close() drops the protocol: asyncio's write() then fails.
        tr.close()
        trace.append(outcome(tr.write, b"after second close"))
        await server.lost
        srv.close()
        await srv.wait_closed()

    trace = same(scenario)
    assert ("TypeError", "data: expecting a bytes-like instance, got str") in trace


def test_error_in_data_received_reaches_handler(same):
    def failing_data_received(data):
        raise ZeroDivisionError("boom")

    async def scenario(loop, trace):
        contexts = []
        loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
        srv, tr, client, server = await _pair(loop, trace)
        client.data_received = failing_data_received
        tr.write(b"ping")
        await client.lost
        trace.append([(c["message"], type(c.get("exception")).__name__,
                       type(c.get("protocol")).__mro__[-4].__name__) for c in contexts])
        await server.lost
        srv.close()
        await srv.wait_closed()

    trace = same(scenario)
    assert any(isinstance(t, list) and t and t[0][1] == "ZeroDivisionError" for t in trace)


def test_untrusted_certificate_fails_the_same(same):
    async def scenario(loop, trace):
        srv = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=server_context())
        port = srv.sockets[0].getsockname()[1]
        try:
            with capture_log() as log:
                await loop.create_connection(asyncio.Protocol, "127.0.0.1", port,
                                             ssl=ssl.create_default_context(),
                                             server_hostname="localhost")
        except Exception as e:
            trace.append((type(e).__name__, e.verify_message if hasattr(e, "verify_message") else str(e)))
        trace.append([r[:2] for r in log.summary()])
        srv.close()
        await srv.wait_closed()

    trace = same(scenario)
    assert trace[0][0] == "SSLCertVerificationError"


def test_verified_connection_and_peercert(same):
    async def scenario(loop, trace):
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(test_utils.SIGNED_CERTFILE)
        srv, tr, client, server = await _pair(loop, trace, sctx=sctx, cctx=verifying_client_context(),
                                              server_hostname="localhost")
        trace.append(tr.get_extra_info("peercert") == test_utils.PEERCERT)
        await _close(tr, client, server, srv)

    assert True in same(scenario)


def test_sni_alpn_and_client_certificates(same):
    async def scenario(loop, trace):
        sctx = server_context()
        sctx.set_alpn_protocols(["h2", "http/1.1"])
        sctx.sni_callback = lambda sslobj, name, ctx: trace.append(("sni", name))
        # The server asks for a client certificate and trusts the test CA.
        sctx.verify_mode = ssl.CERT_REQUIRED
        sctx.load_verify_locations(test_utils.SIGNING_CA)
        cctx = client_context()
        cctx.set_alpn_protocols(["http/1.1"])
        cctx.load_cert_chain(test_utils.SIGNED_CERTFILE)
        srv, tr, client, server = await _pair(loop, trace, sctx=sctx, cctx=cctx, server_hostname="example.org")
        await asyncio.sleep(0.05)
        st = server.transport
        trace.append(("alpn", tr.get_extra_info("ssl_object").selected_alpn_protocol(),
                      st.get_extra_info("ssl_object").selected_alpn_protocol()))
        trace.append(("client cert seen", st.get_extra_info("peercert") == test_utils.PEERCERT))
        await _close(tr, client, server, srv)

    trace = same(scenario)
    assert ("sni", "example.org") in trace and ("alpn", "http/1.1", "http/1.1") in trace


def test_handshake_timeout(same):
    async def scenario(loop, trace):
        # A server that accepts and never speaks TLS.
        listener = socket.create_server(("127.0.0.1", 0))
        try:
            with capture_log() as log:
                await loop.create_connection(asyncio.Protocol, *listener.getsockname(),
                                             ssl=client_context(), ssl_handshake_timeout=0.2)
        except BaseException as e:
            trace.append((type(e).__name__, str(e)))
        trace.append([r[:2] for r in log.summary()])
        listener.close()

    trace = same(scenario)
    assert trace[0][0] in ("TimeoutError", "ConnectionAbortedError")


def test_peer_resets_during_handshake(same):
    async def scenario(loop, trace):
        listener = socket.create_server(("127.0.0.1", 0))

        def reset():
            conn, _ = listener.accept()
            conn.recv(100)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()
        t = threading.Thread(target=reset)
        t.start()
        try:
            await loop.create_connection(asyncio.Protocol, *listener.getsockname(), ssl=client_context())
        except BaseException as e:
            trace.append(type(e).__name__)
        t.join()
        listener.close()

    trace = same(scenario)
    assert trace[0] in ("ConnectionResetError", "SSLError", "SSLEOFError")


def test_flow_control_against_a_peer_that_does_not_read(same):
    """The app is paused once the TLS layer holds too much, resumed when the
    peer reads; nothing is lost."""
    async def scenario(loop, trace):
        srv, tr, client, server = await _pair(loop, trace, server_echo=False)
        server.transport.pause_reading()
        tr.set_write_buffer_limits(high=64 * 1024)
        trace.append(("limits", tr.get_write_buffer_limits()))
        chunk = b"f" * 32 * 1024
        sent = 0
        while ("client", "pause_writing") not in trace and sent < 50_000_000:
            tr.write(chunk)
            sent += len(chunk)
            await asyncio.sleep(0)
        trace.append(("paused with a buffer", tr.get_write_buffer_size() > 0))
        server.transport.resume_reading()
        while len(server.data) < sent:
            await asyncio.sleep(0.001)
        trace.append(("all arrived", bytes(server.data) == b"f" * sent))
        trace.append(("resumed", ("client", "resume_writing") in trace, tr.get_write_buffer_size()))
        await _close(tr, client, server, srv)

    same(scenario)


def test_app_pause_reading_holds_data(same):
    async def scenario(loop, trace):
        srv, tr, client, server = await _pair(loop, trace)
        tr.pause_reading()
        trace.append(("reading", tr.is_reading()))
        tr.write(b"hello")
        await asyncio.sleep(0.1)
        trace.append(("while paused", bytes(client.data)))
        tr.resume_reading()
        await client.got_data
        trace.append(("resumed", tr.is_reading(), bytes(client.data)))
        await _close(tr, client, server, srv)

    same(scenario)


def test_buffered_protocol_app(same):
    class Buffered(asyncio.BufferedProtocol):
        def __init__(self, trace):
            self.trace = trace
            self.buf = bytearray(100)
            # (A bytearray itself would lose data with asyncio's SSLProtocol,
            # which slices the buffer it gets: a copy.)
            self.view = memoryview(self.buf)
            self.data = bytearray()
            self.lost = asyncio.get_running_loop().create_future()

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, sizehint):
            return self.view

        def buffer_updated(self, nbytes):
            assert 0 < nbytes <= 100
            self.data += self.buf[:nbytes]

        def eof_received(self):
            self.trace.append(("buffered eof", len(self.data)))

        def connection_lost(self, exc):
            self.lost.set_result(None)

    async def scenario(loop, trace):
        srv = await loop.create_server(lambda: Recorder(trace, "server", echo=True),
                                       "127.0.0.1", 0, ssl=server_context())
        port = srv.sockets[0].getsockname()[1]
        tr, proto = await loop.create_connection(lambda: Buffered(trace), "127.0.0.1", port,
                                                 ssl=client_context())
        payload = bytes(range(256)) * 1000
        tr.write(payload)
        while len(proto.data) < len(payload):
            await asyncio.sleep(0.001)
        trace.append(("buffered data", bytes(proto.data) == payload))
        tr.close()
        await proto.lost
        srv.close()
        await srv.wait_closed()

    assert ("buffered data", True) in same(scenario)


async def _starttls_server(loop, trace):
    """A plain server that answers the first bytes it gets with b"OK",
    upgrades to TLS (loop.start_tls), then sends b"secret"; returns it and
    a future of its TLS-side protocol."""
    upgraded = loop.create_future()

    class Plain(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            trace.append(("plain", data))
            self.transport.write(b"OK")
            loop.create_task(self.upgrade())

        async def upgrade(self):
            proto = Recorder(trace, "server")
            tls = await loop.start_tls(self.transport, proto, server_context(), server_side=True)
            proto.connection_made(tls)
            tls.write(b"secret")
            upgraded.set_result(proto)

    return await loop.create_server(Plain, "127.0.0.1", 0), upgraded


def test_start_tls_both_sides(same):
    async def scenario(loop, trace):
        srv, upgraded = await _starttls_server(loop, trace)
        port = srv.sockets[0].getsockname()[1]
        tr, client = await loop.create_connection(lambda: Recorder(trace, "client"), "127.0.0.1", port)
        tr.write(b"STARTTLS")
        while client.data != b"OK":
            await asyncio.sleep(0.001)
        client.data.clear()
        client.got_data = loop.create_future()
        tls = await loop.start_tls(tr, client, client_context())
        trace.append(("start_tls", tls.get_extra_info("cipher")[1], tr.is_closing()))
        await client.got_data
        trace.append(("client got", bytes(client.data)))
        tls.close()
        await client.lost
        server = await upgraded
        await server.lost
        srv.close()
        await srv.wait_closed()

    trace = same(scenario)
    assert ("client got", b"secret") in trace


def test_start_tls_checks(same):
    async def scenario(loop, trace):
        srv = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        tr, proto = await loop.create_connection(asyncio.Protocol, *srv.sockets[0].getsockname())
        try:
            await loop.start_tls(tr, proto, "not a context")
        except Exception as e:
            trace.append((type(e).__name__, str(e)[:60]))
        tr.close()
        srv.close()
        await srv.wait_closed()

    same(scenario)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="StreamWriter.start_tls is 3.11+")
def test_streams_start_tls(same):
    async def scenario(loop, trace):
        srv, upgraded = await _starttls_server(loop, trace)
        reader, writer = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2])
        writer.write(b"STARTTLS")
        trace.append(("plain reply", await reader.readexactly(2)))
        await writer.start_tls(client_context())
        trace.append(("client got", await reader.readexactly(6)))
        writer.close()
        await writer.wait_closed()
        server = await upgraded
        await server.lost
        srv.close()
        await srv.wait_closed()

    assert ("client got", b"secret") in same(scenario)


def test_streams_over_tls(same):
    async def scenario(loop, trace):
        async def handle(reader, writer):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context())
        reader, writer = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2],
                                                       ssl=client_context())
        for n in (1, 70_000, 2_000_000):
            writer.write(b"s" * n)
            await writer.drain()
            trace.append(("stream echo", n, await reader.readexactly(n) == b"s" * n))
        writer.write_eof() if writer.can_write_eof() else None
        writer.close()
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()

    same(scenario)


def test_stream_reader_flow_control_over_tls(same):
    """The reader's limit pauses the TLS transport (ferroloop feeds
    asyncio's StreamReader from Rust here too) and reading resumes it."""
    async def scenario(loop, trace):
        sent = asyncio.Event()

        async def handle(reader, writer):
            writer.write(b"t" * 10_000)
            await writer.drain()
            sent.set()
            await reader.read()
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context())
        reader, writer = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2],
                                                       ssl=client_context(), limit=1000)
        await sent.wait()
        while len(reader._buffer) < 10_000:
            await asyncio.sleep(0.001)
        trace.append(("full", len(reader._buffer), reader._paused, writer.transport.is_reading()))
        trace.append(len(await reader.read(20_000)))
        trace.append(("drained", reader._paused, writer.transport.is_reading()))
        writer.close()
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()

    same(scenario)


def test_connection_objects_freed_without_gc(run_on, factories):
    """As asyncio: once closed, the TLS transport, protocol and context are
    freed by reference counting alone (no cycles left behind)."""
    async def scenario(loop, trace):
        cctx = client_context()
        srv, tr, client, server = await _pair(loop, trace, cctx=cctx)
        await _close(tr, client, server, srv)
        refs = [weakref.ref(cctx), weakref.ref(client), weakref.ref(tr)]
        del cctx, client, tr, server, srv
        trace.append([r() is None for r in refs])

    gc.disable()
    try:
        for name in ("ferroloop", "asyncio"):
            trace = run_on(factories[name], scenario)
            assert trace[-1] == [True, True, True], (name, trace[-1])
    finally:
        gc.enable()


def test_many_short_connections_do_not_grow(run_on, factories):
    async def scenario(loop, trace):
        srv = await loop.create_server(lambda: Recorder([], "server", echo=True),
                                       "127.0.0.1", 0, ssl=server_context())
        port = srv.sockets[0].getsockname()[1]
        cctx = client_context()

        async def one():
            tr, proto = await loop.create_connection(lambda: Recorder([], "client"), "127.0.0.1",
                                                     port, ssl=cctx)
            tr.write(b"x" * 1000)
            await proto.got_data
            tr.close()
            await proto.lost

        for _ in range(30):
            await one()
        gc.collect()
        before = len(gc.get_objects())
        for _ in range(150):
            await one()
        gc.collect()
        trace.append(len(gc.get_objects()) - before)
        srv.close()
        await srv.wait_closed()

    trace = run_on(factories["ferroloop"], scenario, timeout=60)
    assert trace[-1] < 500, trace


@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10's TLS transport has no start_tls")
def test_tls_over_tls(same):
    """start_tls over a TLS transport: the inner protocol reads through the
    outer one's buffered path (get_buffer/buffer_updated)."""
    async def scenario(loop, trace):
        inner_server = loop.create_future()

        class Outer(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                self.transport.write(b"OK")
                loop.create_task(self.upgrade())

            async def upgrade(self):
                proto = Recorder(trace, "inner server")
                tls = await loop.start_tls(self.transport, proto, server_context(), server_side=True)
                proto.connection_made(tls)
                inner_server.set_result(proto)

        srv = await loop.create_server(Outer, "127.0.0.1", 0, ssl=server_context())
        tr, client = await loop.create_connection(lambda: Recorder(trace, "client"),
                                                  *srv.sockets[0].getsockname(), ssl=client_context())
        tr.write(b"UP")
        while client.data != b"OK":
            await asyncio.sleep(0.001)
        inner = await loop.start_tls(tr, client, client_context())
        payload = bytes(range(256)) * 1200
        inner.write(payload)
        server = await inner_server
        while len(server.data) < len(payload):
            await asyncio.sleep(0.001)
        trace.append(("inner data", bytes(server.data) == payload))
        inner.close()
        await client.lost
        await server.lost
        srv.close()
        await srv.wait_closed()

    assert ("inner data", True) in same(scenario)


_CountingSocket = counting_socket_class("recv_into", "send")


def test_tls_over_socket_subclass_calls_its_methods(same):
    """TLS over a sock= whose class overrides its I/O methods: asyncio's
    transport underneath calls them, and the records get through intact."""
    async def scenario(loop, trace):
        srv = await loop.create_server(lambda: Recorder(trace, "server", echo=True),
                                       "127.0.0.1", 0, ssl=server_context())
        sock = _CountingSocket(socket.AF_INET, socket.SOCK_STREAM)
        sock.connect(srv.sockets[0].getsockname())
        sock.setblocking(False)
        tr, client = await loop.create_connection(lambda: Recorder(trace, "client"), sock=sock,
                                                  ssl=client_context(), server_hostname="")
        payload = bytes(range(256)) * 1000
        tr.write(payload)
        while len(client.data) < len(payload):
            await asyncio.sleep(0.001)
        trace.append(("echoed", bytes(client.data) == payload, sorted(sock.calls)))
        tr.close()
        await client.lost
        srv.close()
        await srv.wait_closed()
    same(scenario)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10's SSLProtocol has no states")
def test_protocol_state_transitions(same):
    """Every (state, new state) pair through `_set_state`: what is allowed,
    and the error of what is not, as asyncio's SSLProtocol."""
    from asyncio.sslproto import SSLProtocolState

    async def scenario(loop, trace):
        # A fresh protocol of the class the loop's TLS transports use.
        a, b = socket.socketpair()
        app = loop._make_ssl_transport(a, asyncio.Protocol(), client_context(), None,
                                       server_hostname="localhost")
        protocol = type(app._ssl_protocol)(loop, asyncio.Protocol(), client_context(), None,
                                           server_hostname="localhost")
        app.abort()
        b.close()
        for before in SSLProtocolState:
            for after in SSLProtocolState:
                protocol._state = before
                trace.append((before.name, after.name, outcome(protocol._set_state, after),
                              protocol._state.name))
        trace.append(("not a state", outcome(protocol._set_state, "WRAPPED")))
        await asyncio.sleep(0)
    same(scenario)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ssl_shutdown_timeout is 3.11+")
@pytest.mark.parametrize("ending", ["close_notify", "fin", "fin_while_paused", "unanswered"])
def test_how_the_peer_ends(same, ending):
    """The server side's end of a TLS connection, for each way a blocking
    peer can end it: close_notify, a bare FIN, a FIN while the app has
    paused reading, and a server close_notify the peer never answers
    (the shutdown timeout)."""
    async def scenario(loop, trace):
        made = loop.create_future()

        class Server(Recorder):
            def data_received(self, data):
                super().data_received(data)
                if ending == "fin_while_paused":
                    self.transport.pause_reading()
                    loop.call_later(0.2, self.transport.resume_reading)
                elif ending == "unanswered":
                    self.transport.close()

            def eof_received(self):
                super().eof_received()

        def make():
            server = Server(trace, "server", echo=True)
            made.set_result(server)
            return server

        srv = await loop.create_server(make, "127.0.0.1", 0, ssl=server_context(),
                                       ssl_shutdown_timeout=0.3)
        port = srv.sockets[0].getsockname()[1]

        def peer():
            seen = []
            raw = socket.create_connection(("127.0.0.1", port))
            raw.settimeout(5)
            tls = client_context().wrap_socket(raw)  # takes raw's fd over
            tls.sendall(b"hello")
            seen.append(tls.recv(100))
            if ending == "close_notify":
                plain = tls.unwrap()
                seen.append(plain.recv(100))
                plain.close()
                return seen
            # A second socket object on the connection, for TCP-level reads and shutdown.
            tcp = socket.fromfd(tls.fileno(), socket.AF_INET, socket.SOCK_STREAM)
            tcp.settimeout(5)
            if ending.startswith("fin"):
                tcp.shutdown(socket.SHUT_WR)
                seen.append(outcome(tls.recv, 100))
            else:
                seen.append(outcome(tls.recv, 100))  # the server's close_notify
                seen.append(tcp.recv(100))  # then its abort, at the timeout
            tcp.close()
            tls.close()
            return seen

        trace.append(("peer", await loop.run_in_executor(None, peer)))
        server = await made
        await server.lost
        srv.close()
        await srv.wait_closed()
    with capture_log():
        same(scenario)



@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10's SSLProtocol feeds its _SSLPipe")
def test_incoming_bio_standing_in_for_the_c_object(same):
    """An incoming BIO that is not `ssl.MemoryBIO` itself (here a wrapper):
    its `write` is called with a view of the received bytes, as asyncio
    calls it (ferroloop lends its read buffer only to the C method), and
    the records get through intact."""
    class RecordingBIO:
        def __init__(self, inner):
            self._inner = inner
            self.written = set()

        def write(self, data):
            self.written.add(type(data).__name__)
            return self._inner.write(data)

        def __getattr__(self, name):
            return getattr(self._inner, name)

    async def scenario(loop, trace):
        srv, tr, client, server = await _pair(loop, trace, server_hostname="")
        protocol = tr._ssl_protocol
        protocol._incoming = RecordingBIO(protocol._incoming)
        await _echo(tr, client, trace, (1, 20_000, 300_000))
        trace.append(("written as", sorted(protocol._incoming.written)))
        await _close(tr, client, server, srv)

    trace = same(scenario)
    assert ("written as", ["memoryview"]) in trace


def test_ssl_object_standing_in_for_the_c_object(same):
    """An `SSLObject` whose `_sslobj` is not the `_ssl` object itself (here
    a wrapper, made by a context's `sslobject_class`): its read and write
    are called, as asyncio's `SSLObject.read`/`write` call them (ferroloop
    calls the C methods directly only on the `_ssl` object itself), and
    the records get through intact."""
    used = set()

    class Recording:
        def __init__(self, inner):
            self._inner = inner

        def read(self, *args):
            used.add("read")
            return self._inner.read(*args)

        def write(self, data):
            used.add("write")
            return self._inner.write(data)

        def __getattr__(self, name):
            return getattr(self._inner, name)

    class RecordingSSLObject(ssl.SSLObject):
        @classmethod
        def _create(cls, *args, **kwargs):
            obj = super()._create(*args, **kwargs)
            obj._sslobj = Recording(obj._sslobj)
            return obj

    async def scenario(loop, trace):
        used.clear()
        sctx = server_context()
        sctx.sslobject_class = RecordingSSLObject
        srv, tr, client, server = await _pair(loop, trace, sctx=sctx, server_hostname="")
        await _echo(tr, client, trace, (1, 20_000, 300_000))
        await _close(tr, client, server, srv)
        trace.append(("used", sorted(used)))

    trace = same(scenario)
    assert ("used", ["read", "write"]) in trace
