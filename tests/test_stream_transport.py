"""The stream transport (TCP and Unix sockets), differential: protocol
callback order, data integrity, flow control marks, close/abort, errors in
protocol callbacks, BufferedProtocol, misuse — the same trace on ferroloop
and on the standard loop."""

import asyncio
import gc
import itertools
import os
import socket
import sys
import warnings

import pytest

from conftest import capture_log, counting_socket_class, outcome

FAMILIES = ["tcp", "unix"]


async def _connect(loop, family, proto_factory):
    """A transport for proto_factory's protocol and a plain non-blocking
    socket as its peer."""
    if family == "unix":
        ours, peer = socket.socketpair()
        transport, proto = await loop.connect_accepted_socket(proto_factory, ours)
    else:
        listener = socket.create_server(("127.0.0.1", 0))
        transport, proto = await loop.create_connection(proto_factory, *listener.getsockname())
        peer, _ = listener.accept()
        listener.close()
    peer.setblocking(False)
    return transport, proto, peer


async def _finish(transport, proto, peer):
    transport.close()
    await proto.lost
    peer.close()


async def _read_all(loop, sock, nbytes=None):
    chunks = []
    total = 0
    while nbytes is None or total < nbytes:
        data = await loop.sock_recv(sock, 65536)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


class Recorder(asyncio.Protocol):
    """Records the callbacks it gets; received data is joined."""

    def __init__(self, trace, keep_open=False):
        self.trace = trace
        self.keep_open = keep_open
        self.data = bytearray()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.trace.append(("made", isinstance(transport, asyncio.Transport)))

    def data_received(self, data):
        if not self.data:
            self.trace.append("data")
        self.data += data

    def eof_received(self):
        self.trace.append(("eof", bytes(self.data)))
        return self.keep_open

    def pause_writing(self):
        self.trace.append("pause_writing")

    def resume_writing(self):
        self.trace.append("resume_writing")

    def connection_lost(self, exc):
        self.trace.append(("lost", type(exc).__name__ if exc else None))
        self.lost.set_result(None)


@pytest.mark.parametrize("family", FAMILIES)
def test_callback_order_and_data(same, family):
    async def scenario(loop, trace):
        transport, proto, peer = await _connect(loop, family, lambda: Recorder(trace))
        trace.append(("extra", sorted(k for k in ("socket", "sockname", "peername")
                                      if transport.get_extra_info(k) is not None)))
        for i in range(50):
            await loop.sock_sendall(peer, b"x%d," % i)
        peer.shutdown(socket.SHUT_WR)
        await proto.lost
        trace.append(("closing", transport.is_closing(), transport.get_protocol() is None))
        trace.append(await _read_all(loop, peer))
        peer.close()
    same(scenario)


@pytest.mark.parametrize("family", FAMILIES)
def test_close_flushes_everything_queued(same, family):
    payload = os.urandom(4 * 1024 * 1024)

    async def scenario(loop, trace):
        transport, proto, peer = await _connect(loop, family, lambda: Recorder(trace))
        transport.write(payload[:1000])
        # Below the high-water mark: writelines() pauses nothing before 3.12.4.
        transport.writelines([payload[1000:5000], bytearray(payload[5000:9000]),
                              memoryview(payload)[9000:20000], b""])
        transport.write(memoryview(payload)[20000:])
        trace.append(("queued", transport.get_write_buffer_size() > 0))
        transport.close()
        trace.append(("closing", transport.is_closing(), transport.is_reading()))
        received = await _read_all(loop, peer)
        await proto.lost
        trace.append(("received", received == payload))
        peer.close()
    same(scenario)


@pytest.mark.parametrize("family", FAMILIES)
def test_abort_drops_queued_data_at_once(same, family):
    async def scenario(loop, trace):
        transport, proto, peer = await _connect(loop, family, lambda: Recorder(trace))
        transport.write(b"x" * (8 * 1024 * 1024))
        trace.append(("queued", transport.get_write_buffer_size() > 0))
        transport.abort()
        trace.append(("after abort", transport.get_write_buffer_size(), transport.is_closing()))
        transport.abort()  # twice is harmless
        await proto.lost
        received = await _read_all(loop, peer)
        trace.append(("partial", 0 < len(received) < 8 * 1024 * 1024))
        peer.close()
    same(scenario)


@pytest.mark.parametrize("family", FAMILIES)
def test_flow_control_marks(same, family):
    async def scenario(loop, trace):
        transport, proto, peer = await _connect(loop, family, lambda: Recorder(trace))
        trace.append(("defaults", transport.get_write_buffer_limits()))
        transport.set_write_buffer_limits(high=4096)
        trace.append(("limits", transport.get_write_buffer_limits()))
        chunk = b"y" * 65536
        sizes = []
        # Write until the protocol is told to pause (the peer reads nothing).
        while "pause_writing" not in trace:
            transport.write(chunk)
            sizes.append(transport.get_write_buffer_size())
        trace.append(("paused above high", sizes[-1] > 4096))
        transport.write(chunk)  # paused only once
        written = len(chunk) * (len(sizes) + 1)
        received = await _read_all(loop, peer, nbytes=written)
        trace.append(("all received", len(received) == written))
        trace.append(("drained", transport.get_write_buffer_size()))
        await _finish(transport, proto, peer)
    same(scenario)


def test_write_buffer_limits_arguments(same):
    async def scenario(loop, trace):
        transport, proto, peer = await _connect(loop, "unix", lambda: Recorder(trace))
        for args in [dict(high=100), dict(low=100), dict(high=100, low=10),
                     dict(high=0), dict(high=10, low=20), dict(low=-1), dict(high="x")]:
            trace.append(outcome(transport.set_write_buffer_limits, **args))
            trace.append(transport.get_write_buffer_limits())
        await _finish(transport, proto, peer)
    same(scenario)


def test_write_misuse(same):
    async def scenario(loop, trace):
        transport, proto, peer = await _connect(loop, "unix", lambda: Recorder(trace))
        for data in ["text", 12, None, [b"a"]]:
            trace.append(outcome(transport.write, data))
        transport.write(b"")
        trace.append(("can_write_eof", transport.can_write_eof()))
        transport.write_eof()
        trace.append(("eof data", await _read_all(loop, peer)))
        trace.append(outcome(transport.write, b"late"))
        trace.append(outcome(transport.writelines, [b"late"]))
        await _finish(transport, proto, peer)
    same(scenario)


def test_methods_called_every_way(same):
    """The transport's methods (the core's, made the class's own) called
    with keywords, through the class, bound and kept, or replaced on the
    object; argument errors are TypeErrors."""
    async def scenario(loop, trace):
        transport, proto, peer = await _connect(loop, "unix", lambda: Recorder(trace))
        cls = type(transport)
        trace.append(outcome(transport.write, data=b"a"))
        trace.append(outcome(cls.write, transport, b"b"))
        write = transport.write
        trace.append(outcome(write, b"c"))
        trace.append(outcome(cls.writelines, transport, [b"d", b"e"]))
        trace.append(outcome(cls.is_closing, transport))
        trace.append(outcome(transport.pause_reading))
        trace.append(outcome(cls.is_reading, transport))
        trace.append(outcome(cls.resume_reading, transport))
        trace.append(outcome(transport.is_reading))
        trace.append(outcome(cls.get_write_buffer_size, transport))
        for call in (lambda: transport.write(), lambda: transport.write(b"x", b"y"),
                     lambda: transport.write(dat=b"x"), lambda: transport.is_closing(1),
                     lambda: transport.pause_reading(True)):
            trace.append(outcome(call)[0])
        transport.write = lambda data: trace.append(("replaced", data))
        transport.write(b"f")
        del transport.write
        transport.write(b"g")
        trace.append(("peer got", await _read_all(loop, peer, 6)))
        await _finish(transport, proto, peer)
        trace.append(outcome(cls.is_closing, transport))
    same(scenario)


def test_writes_after_connection_lost_warn(same):
    async def scenario(loop, trace):
        transport, proto, peer = await _connect(loop, "unix", lambda: Recorder(trace))
        transport.abort()
        await proto.lost
        with capture_log() as log:
            for _ in range(7):
                transport.write(b"gone")
        trace.append(log.summary())
        peer.close()
    same(scenario)


def test_data_received_error_goes_to_handler_and_closes(same):
    class Failing(Recorder):
        def data_received(self, data):
            raise ZeroDivisionError("boom")

    async def scenario(loop, trace):
        contexts = []
        loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
        transport, proto, peer = await _connect(loop, "tcp", lambda: Failing(trace))
        await loop.sock_sendall(peer, b"hello")
        await proto.lost
        ctx = contexts[0]
        trace.append((ctx["message"], type(ctx["exception"]).__name__,
                      ctx["transport"] is transport, ctx["protocol"] is proto))
        trace.append(("loop alive", loop.is_running()))
        peer.close()
    same(scenario)


def test_pause_writing_error_goes_to_handler(same):
    class Failing(Recorder):
        def pause_writing(self):
            raise ValueError("no")

    async def scenario(loop, trace):
        contexts = []
        loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
        transport, proto, peer = await _connect(loop, "unix", lambda: Failing(trace))
        transport.set_write_buffer_limits(high=0)
        transport.write(b"z" * (4 * 1024 * 1024))
        trace.append([(c["message"], type(c["exception"]).__name__) for c in contexts])
        transport.abort()
        await proto.lost
        peer.close()
    same(scenario)


def test_eof_received_keep_open_allows_reply(same):
    async def scenario(loop, trace):
        transport, proto, peer = await _connect(loop, "tcp", lambda: Recorder(trace, keep_open=True))
        await loop.sock_sendall(peer, b"question")
        peer.shutdown(socket.SHUT_WR)
        while not any(isinstance(t, tuple) and t[0] == "eof" for t in trace):
            await asyncio.sleep(0.001)
        trace.append(("closing after eof", transport.is_closing()))
        transport.write(b"answer")
        transport.close()
        trace.append(await _read_all(loop, peer))
        await proto.lost
        peer.close()
    same(scenario)


def test_pause_and_resume_reading(same):
    async def scenario(loop, trace):
        transport, proto, peer = await _connect(loop, "unix", lambda: Recorder(trace))
        await asyncio.sleep(0)
        transport.pause_reading()
        trace.append(("reading", transport.is_reading()))
        await loop.sock_sendall(peer, b"held back")
        await asyncio.sleep(0.05)
        trace.append(("while paused", bytes(proto.data)))
        transport.resume_reading()
        trace.append(("reading", transport.is_reading()))
        while not proto.data:
            await asyncio.sleep(0.001)
        trace.append(("after resume", bytes(proto.data)))
        transport.close()
        trace.append(("reading after close", transport.is_reading()))
        transport.resume_reading()
        await proto.lost
        peer.close()
    same(scenario)


class Buffered(asyncio.BufferedProtocol):
    def __init__(self, trace, size=1000):
        self.trace = trace
        self.buf = bytearray(size)
        self.data = bytearray()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.trace.append("made")

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.data += self.buf[:nbytes]

    def eof_received(self):
        self.trace.append(("eof", len(self.data)))

    def connection_lost(self, exc):
        self.trace.append(("lost", type(exc).__name__ if exc else None))
        self.lost.set_result(None)


@pytest.mark.parametrize("family", FAMILIES)
def test_buffered_protocol(same, family):
    payload = os.urandom(300_000)

    async def scenario(loop, trace):
        transport, proto, peer = await _connect(loop, family, lambda: Buffered(trace))
        await loop.sock_sendall(peer, payload)
        peer.shutdown(socket.SHUT_WR)
        await proto.lost
        trace.append(proto.data == payload)
        peer.close()
    same(scenario)


def test_buffered_protocol_empty_buffer_is_fatal(same):
    async def scenario(loop, trace):
        contexts = []
        loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
        transport, proto, peer = await _connect(loop, "unix", lambda: Buffered(trace, size=0))
        await loop.sock_sendall(peer, b"data")
        await proto.lost
        trace.append([(c["message"], type(c["exception"]).__name__, str(c["exception"])) for c in contexts])
        peer.close()
    same(scenario)


def test_set_protocol_switches_receiver(same):
    async def scenario(loop, trace):
        transport, first, peer = await _connect(loop, "unix", lambda: Recorder(trace))
        await loop.sock_sendall(peer, b"one")
        while not first.data:
            await asyncio.sleep(0.001)
        second = Buffered(trace)
        transport.set_protocol(second)
        trace.append(transport.get_protocol() is second)
        await loop.sock_sendall(peer, b"two")
        peer.shutdown(socket.SHUT_WR)
        await second.lost
        trace.append((bytes(first.data), bytes(second.data)))
        peer.close()
    same(scenario)


def test_peer_reset_reports_connection_error(same):
    async def scenario(loop, trace):
        transport, proto, peer = await _connect(loop, "tcp", lambda: Recorder(trace))
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()  # RST
        await proto.lost
        trace.append(transport.is_closing())
    same(scenario)


def test_unclosed_transport_warns_and_closes_its_socket(factory):
    loop = factory()
    fds_before = len(os.listdir("/proc/self/fd"))
    ours, peer = socket.socketpair()

    async def connect():
        await loop.connect_accepted_socket(asyncio.Protocol, ours)
    loop.run_until_complete(connect())
    loop.close()
    del ours
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) and "unclosed transport" in str(w.message)
               for w in caught)
    peer.close()
    assert len(os.listdir("/proc/self/fd")) <= fds_before


def test_many_connections_leak_no_fds(factory):
    loop = factory()

    async def main():
        server = await loop.create_server(lambda: Recorder([]), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(200):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"hi")
            writer.close()
            await writer.wait_closed()
        await asyncio.sleep(0.05)
        after = len(os.listdir("/proc/self/fd"))
        server.close()
        await server.wait_closed()
        return after - before

    try:
        assert loop.run_until_complete(main()) <= 2
    finally:
        loop.close()


def test_writelines_pauses_the_protocol(impl):
    """writelines() honours the high-water mark, as write() does (CPython
    fixed this for its own writelines in gh-127655; older 3.12/3.13 patch
    releases never pause)."""
    trace = []
    loop = impl.new_event_loop()

    async def main():
        transport, proto, peer = await _connect(loop, "unix", lambda: Recorder(trace))
        transport.set_write_buffer_limits(high=1000)
        transport.writelines([b"a" * 1_000_000, b"b" * 1_000_000])
        paused = "pause_writing" in trace
        received = await _read_all(loop, peer, nbytes=2_000_000)
        await _finish(transport, proto, peer)
        return paused, len(received)

    try:
        assert loop.run_until_complete(main()) == (True, 2_000_000)
    finally:
        loop.close()


def test_accept_backs_off_when_out_of_fds(impl):
    """EMFILE on accept: the server logs, pauses accepting for a moment and
    serves again once fds are free — no spinning, no crash."""
    from conftest import run_python
    r = run_python("""
        import asyncio, resource, socket, time
        IMPL_IMPORT

        async def main():
            loop = asyncio.get_running_loop()
            served = []
            server = await loop.create_server(lambda: Echo(served), "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            hog = []
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
            try:
                while True:
                    hog.append(socket.socket())
            except OSError:
                pass
            hog.pop().close()  # one fd for the client, none for accept()
            client = socket.create_connection(("127.0.0.1", port))
            t0 = time.process_time()
            await asyncio.sleep(0.3)
            busy = time.process_time() - t0
            for s in hog:
                s.close()
            await asyncio.sleep(1.5)  # asyncio retries accept after 1 s
            client.sendall(b"hi")
            client.settimeout(5)
            reply = await loop.run_in_executor(None, client.recv, 10)
            client.close()
            server.close()
            print(busy < 0.2, reply, len(served))

        class Echo(asyncio.Protocol):
            def __init__(self, served):
                served.append(self)
            def connection_made(self, t):
                self.t = t
            def data_received(self, d):
                self.t.write(d)

        impl.run(main())
    """)
    assert r.stdout.split() == ["True", "b'hi'", "1"], r.stderr
    assert "Too many open files" in r.stderr


@pytest.mark.parametrize("family", FAMILIES)
def test_transport_calls_after_the_loop_closed(same, family):
    """Misuse after loop.close(): the same exceptions as asyncio, no crash,
    and from another thread too."""
    import threading

    def scenario(loop, trace):
        async def connect():
            return await _connect(loop, family, asyncio.Protocol)
        transport, proto, peer = loop.run_until_complete(connect())
        loop.close()
        calls = [("write", b"x"), ("write", b"y" * 10_000_000), ("pause_reading",), ("resume_reading",),
                 ("set_write_buffer_limits", 10), ("get_write_buffer_size",), ("is_closing",),
                 ("write_eof",), ("close",), ("abort",), ("is_closing",)]
        for name, *args in calls:
            trace.append((name, outcome(getattr(transport, name), *args)))
        other = []
        t = threading.Thread(target=lambda: other.append(outcome(transport.write, b"z")))
        t.start()
        t.join()
        trace.append(other)
        transport._sock.close() if transport._sock is not None else None
        peer.close()
    same(scenario)


# Overrides of the methods asyncio's stream transport does its I/O with.
_CountingSocket = counting_socket_class("recv", "recv_into", "send", "sendmsg", "shutdown")


class _PlainSubclass(socket.socket):
    """A socket subclass that overrides no I/O method."""


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cls", [_CountingSocket, _PlainSubclass])
def test_socket_subclass_io_methods_are_called(same, family, cls):
    """A socket subclass passed as sock=: asyncio's transport does its I/O
    through the socket's methods, so overrides see every call."""
    async def scenario(loop, trace):
        if family == "unix":
            a, peer = socket.socketpair()
            ours = cls(a.family, a.type, fileno=a.detach())
        else:
            listener = socket.create_server(("127.0.0.1", 0))
            ours = cls(socket.AF_INET, socket.SOCK_STREAM)
            ours.connect(listener.getsockname())
            peer, _ = listener.accept()
            listener.close()
        ours.setblocking(False)
        peer.setblocking(False)
        transport, proto = await loop.create_connection(lambda: Recorder(trace), sock=ours)
        await loop.sock_sendall(peer, b"ping" * 1000)
        while len(proto.data) < 4000:
            await asyncio.sleep(0.01)
        transport.write(b"pong" * 100_000)
        transport.write_eof()
        trace.append(len(await _read_all(loop, peer)))
        peer.close()
        await proto.lost
        trace.append(sorted(getattr(ours, "calls", ())))
    same(scenario)


def test_connect_while_socket_class_is_patched(same):
    """asyncssh's tests replace socket.socket with a factory function while
    connecting; the transports still get made (and as asyncio makes them)."""
    from unittest import mock

    real_socket = socket.socket

    def socket_factory(*args, **kwargs):
        return real_socket(*args, **kwargs)

    async def scenario(loop, trace):
        server = await asyncio.start_server(lambda r, w: w.write(b"hi") or w.close(), "127.0.0.1", 0)
        with mock.patch("socket.socket", socket_factory):
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            trace.append(await reader.read())
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
    same(scenario)


def test_unix_server_close_runs_asyncios_cleanup(same, tmp_path):
    """Closing a Unix server: from 3.13 asyncio removes the socket file it
    made, from its own `_stop_serving` (aiohttp's tests allow-list that
    frame for the blocking os.stat); ferroloop runs that same code."""
    from unittest import mock

    async def scenario(loop, trace):
        path = str(tmp_path / f"s{len(os.listdir(tmp_path))}.sock")
        server = await asyncio.start_unix_server(lambda r, w: w.close(), path)
        callers = []
        real_stat = os.stat

        def spy(*args, **kwargs):
            code = sys._getframe(1).f_code
            callers.append((os.path.basename(code.co_filename), code.co_name))
            return real_stat(*args, **kwargs)

        with mock.patch("os.stat", spy):
            server.close()
            await server.wait_closed()
        trace.append((callers, os.path.exists(path)))
    same(scenario)


class _NamedSocket(socket.socket):
    """Overrides only the name methods: the transport reports what they say."""

    def getsockname(self):
        return ("sockname", super().getsockname())

    def getpeername(self):
        return ("peername", super().getpeername())


_names = itertools.count()


def _extra_info_sockets(kind, tmp_path):
    """(transport's socket, peer) for each kind of endpoint whose names the
    transport reads: IPv4, IPv6, Unix path, abstract, unnamed, a subclass."""
    if kind in ("ipv4", "ipv6", "subclass"):
        family, host = (socket.AF_INET6, "::1") if kind == "ipv6" else (socket.AF_INET, "127.0.0.1")
        listener = socket.create_server((host, 0), family=family)
        ours = (_NamedSocket if kind == "subclass" else socket.socket)(family, socket.SOCK_STREAM)
        ours.connect(listener.getsockname())
        peer, _ = listener.accept()
        listener.close()
        return ours, peer
    if kind == "unnamed":
        return socket.socketpair()
    listener = socket.socket(socket.AF_UNIX)
    n = next(_names)    # (each loop's run binds its own)
    listener.bind(str(tmp_path / f"s{n}") if kind == "unix" else b"\0ferroloop-extra-%d-%d" % (os.getpid(), n))
    listener.listen()
    ours = socket.socket(socket.AF_UNIX)
    ours.connect(listener.getsockname())
    peer, _ = listener.accept()
    listener.close()
    return ours, peer


@pytest.mark.parametrize("kind", ["ipv4", "ipv6", "unix", "abstract", "unnamed", "subclass"])
@pytest.mark.parametrize("side", ["connected", "accepted"])
def test_extra_info_names(same, tmp_path, kind, side):
    """sockname and peername as the standard loop reports them (ferroloop
    formats them itself for plain sockets), for a transport made from a
    connected socket and for one a server accepted."""
    if kind == "ipv6" and not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def scenario(loop, trace):
        ours, peer = _extra_info_sockets(kind, tmp_path)
        if side == "accepted":
            ours, peer = peer, ours     # the listener's end
        ours.setblocking(False)
        transport, proto = await loop.connect_accepted_socket(lambda: Recorder(trace), ours)
        names = [transport.get_extra_info(n) for n in ("sockname", "peername")]
        trace.append(names == [ours.getsockname(), ours.getpeername()])
        trace.append([type(n).__name__ for n in names])
        trace.append(type(transport.get_extra_info("socket")).__name__)
        await _finish(transport, proto, peer)
        trace.append(transport.get_extra_info("sockname") == names[0])
    same(scenario)


def test_extra_info_of_a_closed_socket(same):
    """A socket closed before its transport is made: the names are None,
    and starting to read fails in the loop's exception handler."""
    async def scenario(loop, trace):
        loop.set_exception_handler(lambda loop, context: trace.append(type(context.get("exception")).__name__))
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        ours.close()
        transport = loop._make_socket_transport(ours, asyncio.Protocol())
        trace.append([transport.get_extra_info(n) for n in ("sockname", "peername")])
        trace.append(transport._sock_fd)
        for _ in range(3):
            await asyncio.sleep(0)
        transport._sock = None  # (closing it would fail on the standard loop: fd -1)
        peer.close()
    same(scenario)


def test_connection_lost_error_still_releases_everything(same):
    """connection_lost() raising: the loop's handler gets the error, and the
    socket is closed and the server left all the same (asyncio's finally),
    so wait_closed() returns."""
    async def scenario(loop, trace):
        # (the message names the callback, whose class is the loop's own)
        loop.set_exception_handler(lambda loop, context: trace.append(
            (context["message"].rpartition(".")[2], repr(context.get("exception")))))

        class Failing(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
                transport.close()

            def connection_lost(self, exc):
                trace.append(("lost", exc))
                raise RuntimeError("from connection_lost")

        protocols = []
        server = await loop.create_server(lambda: protocols.append(Failing()) or protocols[-1], "127.0.0.1", 0)
        client = socket.create_connection(server.sockets[0].getsockname())
        while not protocols or not protocols[0].transport.is_closing():
            await asyncio.sleep(0.01)
        for _ in range(5):
            await asyncio.sleep(0)
        transport = protocols[0].transport
        trace.append((transport.get_extra_info("socket").fileno(), transport._sock, transport._server))
        trace.append(outcome(transport._call_connection_lost, None))
        client.close()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
        trace.append("closed")
    same(scenario)


def test_transport_registry(same):
    """`loop._transports` (asyncio's WeakValueDictionary, which ferroloop
    fills without its __setitem__'s frames): the transport is found by fd,
    add_reader on its fd is refused, and a transport that is gone leaves
    it; also while the dictionary is being iterated (removals pending)."""
    from weakref import _IterationGuard

    async def scenario(loop, trace):
        registry = loop._transports
        transport, proto, peer = await _connect(loop, "tcp", lambda: Recorder(trace))
        fd = transport._sock_fd
        entry = registry.data[fd]
        trace.append((registry[fd] is transport, type(entry).__name__, entry.key == fd))
        error = outcome(loop.add_reader, fd, lambda: None)
        trace.append((error[0], error[1].startswith(f"File descriptor {fd} is used by transport <")))
        await _finish(transport, proto, peer)
        del transport, proto, entry
        gc.collect()
        trace.append(fd in registry)

        # A transport gone while the dictionary is iterated leaves its
        # removal pending; a new transport made during the iteration (the
        # fd reused) is found, and the removal does not stay pending (the
        # dictionary commits pending removals on its next use).
        with _IterationGuard(registry):
            first, proto, peer = await _connect(loop, "tcp", lambda: Recorder(trace))
            first_fd = first._sock_fd
            await _finish(first, proto, peer)
            del first, proto
            gc.collect()
            trace.append(len(registry._pending_removals))
            second, proto, peer = await _connect(loop, "tcp", lambda: Recorder(trace))
            trace.append((second._sock_fd == first_fd, registry.get(second._sock_fd) is second,
                          len(registry._pending_removals), len(registry)))
        await _finish(second, proto, peer)
    same(scenario)
