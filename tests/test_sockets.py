"""loop.sock_* methods on socketpairs and TCP/UDP loopback sockets."""

import asyncio
import hashlib
import os
import socket
import sys

import pytest

from conftest import exc_outcome

needs_311 = pytest.mark.skipif(sys.version_info < (3, 11),
                               reason="sock_recvfrom/sendto are new in 3.11")


def _pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def _tcp_listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.setblocking(False)
    return srv


def _udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def run(loop, coro, timeout=20):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def test_sock_recv_sendall_socketpair(loop):
    a, b = _pair()
    with a, b:
        async def main():
            await loop.sock_sendall(a, b"hello world")
            data = await loop.sock_recv(b, 1024)
            reader = asyncio.ensure_future(loop.sock_recv(a, 1024))
            await asyncio.sleep(0.01)
            assert not reader.done()      # waits for data
            await loop.sock_sendall(b, b"back")
            return data, await reader
        assert run(loop, main()) == (b"hello world", b"back")


def test_sock_sendall_returns_none_and_recv_eof(loop):
    a, b = _pair()
    with a:
        async def main():
            r = await loop.sock_sendall(b, b"x")
            b.close()
            return r, await loop.sock_recv(a, 10), await loop.sock_recv(a, 10)
        assert run(loop, main()) == (None, b"x", b"")


@pytest.mark.parametrize("buf_kind", ["bytearray", "memoryview"])
def test_sock_recv_into(loop, buf_kind):
    a, b = _pair()
    with a, b:
        async def main():
            buf = bytearray(16)
            target = buf if buf_kind == "bytearray" else memoryview(buf)[4:]
            fut = asyncio.ensure_future(loop.sock_recv_into(a, target))
            await asyncio.sleep(0.01)
            await loop.sock_sendall(b, b"abcdef")
            n = await fut
            return n, bytes(buf)
        n, buf = run(loop, main())
        assert n == 6
        if buf_kind == "bytearray":
            assert buf[:6] == b"abcdef"
        else:
            assert buf[4:10] == b"abcdef"


def test_tcp_accept_connect(loop):
    srv = _tcp_listener()
    with srv:
        port = srv.getsockname()[1]

        async def main():
            cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            cli.setblocking(False)
            with cli:
                acc = asyncio.ensure_future(loop.sock_accept(srv))
                await asyncio.sleep(0.01)
                assert not acc.done()
                r = await loop.sock_connect(cli, ("127.0.0.1", port))
                conn, addr = await acc
                with conn:
                    assert conn.gettimeout() == 0.0  # non-blocking
                    assert addr == cli.getsockname()
                    await loop.sock_sendall(cli, b"ping")
                    got = await loop.sock_recv(conn, 10)
                    await loop.sock_sendall(conn, b"pong")
                    back = await loop.sock_recv(cli, 10)
                    return r, got, back
        assert run(loop, main()) == (None, b"ping", b"pong")


def test_sock_connect_resolves_localhost(loop):
    srv = _tcp_listener()
    with srv:
        port = srv.getsockname()[1]

        async def main():
            cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            cli.setblocking(False)
            with cli:
                await loop.sock_connect(cli, ("localhost", port))
                conn, _ = await loop.sock_accept(srv)
                conn.close()
                return cli.getpeername()
        assert run(loop, main()) == ("127.0.0.1", port)


def test_sock_connect_refused(same):
    async def scenario(loop, trace):
        s = _tcp_listener()
        port = s.getsockname()[1]
        s.close()
        cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        cli.setblocking(False)
        with cli:
            try:
                await loop.sock_connect(cli, ("127.0.0.1", port))
            except OSError as e:
                trace.append((type(e).__name__, e.errno))

    import errno
    assert same(scenario) == [("ConnectionRefusedError", errno.ECONNREFUSED)]


def test_sock_connect_outcomes_on_unix_sockets(same):
    """Errors connect() reports at once (no such path, a bad address) and a
    listener whose queue is full (EAGAIN: the wait for writability) come
    out of sock_connect as they do on asyncio: same types, errno, message."""
    import tempfile

    async def scenario(loop, trace):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "listener")
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(path)
            listener.listen(0)
            queued = []
            for address in (os.path.join(tmp, "missing"), 123, path, path, path):
                cli = socket.socket(socket.AF_UNIX)
                cli.setblocking(False)
                try:
                    await asyncio.wait_for(loop.sock_connect(cli, address), 2)
                    # (After EAGAIN, asyncio reports success once the socket
                    # is writable, connected or not.)
                    trace.append(("done", exc_outcome(cli.getpeername)))
                    queued.append(cli)
                except (OSError, TypeError) as e:
                    trace.append((type(e).__name__, getattr(e, "errno", None), str(e)))
                    cli.close()
            for cli in queued:
                cli.close()
            listener.close()
    same(scenario)


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_sock_connect_bad_addresses(same, kind):
    """Addresses connect() refuses before any system call: the same
    exception and message (which names connect()) as on asyncio."""
    async def scenario(loop, trace):
        for address in (("127.0.0.1", 70000), ("127.0.0.1",), ("127.0.0.1", "x"), 7):
            with socket.socket(socket.AF_INET, kind) as cli:
                cli.setblocking(False)
                try:
                    await loop.sock_connect(cli, address)
                    trace.append("connected")
                except Exception as e:  # noqa: BLE001 - compared with asyncio's
                    trace.append((type(e).__name__, str(e)))
    same(scenario)


def test_many_concurrent_accepts_and_connects(loop):
    srv = _tcp_listener()
    with srv:
        port = srv.getsockname()[1]

        async def client(i):
            c = socket.socket()
            c.setblocking(False)
            with c:
                await loop.sock_connect(c, ("127.0.0.1", port))
                await loop.sock_sendall(c, b"%d;" % i)
                return await loop.sock_recv(c, 100)

        async def server(n):
            got = []
            for _ in range(n):
                conn, _ = await loop.sock_accept(srv)
                with conn:
                    data = await loop.sock_recv(conn, 100)
                    got.append(data)
                    await loop.sock_sendall(conn, data.upper() + b"ok")
            return got

        async def main():
            n = 30
            s = asyncio.ensure_future(server(n))
            replies = await asyncio.gather(*(client(i) for i in range(n)))
            return sorted(await s), sorted(replies)
        got, replies = run(loop, main())
        assert got == sorted(b"%d;" % i for i in range(30))
        assert replies == sorted(b"%d;ok" % i for i in range(30))


@pytest.mark.parametrize("size", [8 * 1024 * 1024])
def test_large_sendall_no_data_loss(loop, size):
    a, b = _pair()
    with a, b:
        payload = os.urandom(1024) * (size // 1024)

        async def reader():
            h = hashlib.sha256()
            n = 0
            while n < size:
                chunk = await loop.sock_recv(b, 256 * 1024)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
            return n, h.hexdigest()

        async def main():
            r = asyncio.ensure_future(reader())
            await loop.sock_sendall(a, payload)
            return await r
        n, digest = run(loop, main())
        assert n == size
        assert digest == hashlib.sha256(payload).hexdigest()


def test_large_sendall_tcp_memoryview(loop):
    srv = _tcp_listener()
    size = 4 * 1024 * 1024
    payload = bytes(range(256)) * (size // 256)
    with srv:
        async def main():
            cli = socket.socket()
            cli.setblocking(False)
            with cli:
                await loop.sock_connect(cli, srv.getsockname())
                conn, _ = await loop.sock_accept(srv)
                with conn:
                    async def read_all():
                        parts = []
                        while True:
                            d = await loop.sock_recv(conn, 65536)
                            if not d:
                                return b"".join(parts)
                            parts.append(d)
                    r = asyncio.ensure_future(read_all())
                    await loop.sock_sendall(cli, memoryview(payload))
                    cli.shutdown(socket.SHUT_WR)
                    return await r
        assert run(loop, main()) == payload


@pytest.mark.parametrize("method", ["sock_recv", "sock_recv_into"])
def test_cancel_pending_recv_loses_no_data(loop, method):
    a, b = _pair()
    with a, b:
        async def main():
            buf = bytearray(100)
            args = (a, 100) if method == "sock_recv" else (a, buf)
            t = asyncio.ensure_future(getattr(loop, method)(*args))
            await asyncio.sleep(0.01)
            t.cancel()
            try:
                await t
            except asyncio.CancelledError:
                pass
            else:  # pragma: no cover
                raise AssertionError("not cancelled")
            await loop.sock_sendall(b, b"after-cancel")
            await asyncio.sleep(0.01)
            data = await loop.sock_recv(a, 100)
            # and the socket keeps working for a second round
            t2 = asyncio.ensure_future(loop.sock_recv(a, 100))
            await asyncio.sleep(0.01)
            await loop.sock_sendall(b, b"second")
            return data, await t2
        assert run(loop, main()) == (b"after-cancel", b"second")


def test_cancel_pending_accept_then_accept_again(loop):
    srv = _tcp_listener()
    with srv:
        async def main():
            t = asyncio.ensure_future(loop.sock_accept(srv))
            await asyncio.sleep(0.01)
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)
            cli = socket.socket()
            cli.setblocking(False)
            with cli:
                await loop.sock_connect(cli, srv.getsockname())
                conn, _ = await loop.sock_accept(srv)
                conn.close()
            return t.cancelled()
        assert run(loop, main()) is True


def test_concurrent_recv_on_two_sockets(loop):
    a1, b1 = _pair()
    a2, b2 = _pair()
    with a1, b1, a2, b2:
        async def main():
            r1 = asyncio.ensure_future(loop.sock_recv(a1, 10))
            r2 = asyncio.ensure_future(loop.sock_recv(a2, 10))
            await asyncio.sleep(0.01)
            await loop.sock_sendall(b2, b"two")
            await loop.sock_sendall(b1, b"one")
            return await r1, await r2
        assert run(loop, main()) == (b"one", b"two")


@pytest.mark.uvloop_differs("uvloop lacks sock_recvfrom")
@needs_311
def test_udp_sendto_recvfrom(loop):
    s1, s2 = _udp(), _udp()
    with s1, s2:
        async def main():
            r = asyncio.ensure_future(loop.sock_recvfrom(s2, 100))
            await asyncio.sleep(0.01)
            n = await loop.sock_sendto(s1, b"dgram", s2.getsockname())
            data, addr = await r
            buf = bytearray(100)
            await loop.sock_sendto(s2, b"reply", s1.getsockname())
            nbytes, addr2 = await loop.sock_recvfrom_into(s1, buf)
            return n, data, addr, bytes(buf[:nbytes]), addr2
        n, data, addr, reply, addr2 = run(loop, main())
        assert (n, data, reply) == (5, b"dgram", b"reply")
        assert addr == s1.getsockname()
        assert addr2 == s2.getsockname()


@pytest.mark.uvloop_differs("uvloop lacks sock_recvfrom_into")
@needs_311
def test_sock_recvfrom_into_nbytes(loop):
    s1, s2 = _udp(), _udp()
    with s1, s2:
        async def main():
            await loop.sock_sendto(s1, b"0123456789", s2.getsockname())
            buf = bytearray(20)
            n, addr = await loop.sock_recvfrom_into(s2, buf, 4)
            return n, bytes(buf[:n])
        assert run(loop, main()) == (4, b"0123")


def _blocking_calls(loop, s, buf):
    yield "sock_recv", lambda: loop.sock_recv(s, 1)
    yield "sock_recv_into", lambda: loop.sock_recv_into(s, buf)
    yield "sock_sendall", lambda: loop.sock_sendall(s, b"x")
    yield "sock_connect", lambda: loop.sock_connect(s, ("127.0.0.1", 1))
    yield "sock_accept", lambda: loop.sock_accept(s)
    if sys.version_info >= (3, 11):
        yield "sock_recvfrom", lambda: loop.sock_recvfrom(s, 1)
        yield "sock_recvfrom_into", lambda: loop.sock_recvfrom_into(s, buf)
        yield "sock_sendto", lambda: loop.sock_sendto(s, b"x",
                                                      ("127.0.0.1", 9))


@pytest.mark.uvloop_differs("uvloop does not check blocking sockets")
def test_blocking_socket_in_debug_mode_raises(same):
    async def scenario(loop, trace):
        s = socket.socket()     # blocking
        with s:
            for name, call in _blocking_calls(loop, s, bytearray(4)):
                try:
                    await call()
                except Exception as e:
                    trace.append((name, type(e).__name__, str(e)))
                else:  # pragma: no cover
                    trace.append((name, "no error"))

    t = same(scenario, debug=True)
    assert all(x[1:] == ("ValueError", "the socket must be non-blocking")
               for x in t), t


def test_sock_recv_zero_bytes(same):
    async def scenario(loop, trace):
        a, b = _pair()
        with a, b:
            b.send(b"x")
            trace.append(await loop.sock_recv(a, 0))
            trace.append(await loop.sock_recv(a, 10))

    assert same(scenario) == [b"", b"x"]


@pytest.mark.uvloop_differs("uvloop raises ValueError")
def test_sock_recv_on_closed_socket_error_type(same):
    async def scenario(loop, trace):
        a, b = _pair()
        b.close()
        a.close()
        try:
            await loop.sock_recv(a, 10)
        except Exception as e:
            trace.append(type(e).__name__)

    same(scenario)


class _SocketSubclass(socket.socket):
    """Not a plain socket.socket: asyncio's code path, calling its methods."""

    def recv(self, n, *args):
        return b"sub:" + super().recv(n, *args)


def test_socket_subclass_methods_are_honoured(same):
    async def scenario(loop, trace):
        a, b = socket.socketpair()
        sub = _SocketSubclass(a.family, a.type, fileno=a.detach())
        sub.setblocking(False)
        b.setblocking(False)
        with sub, b:
            pending = asyncio.ensure_future(loop.sock_recv(sub, 100))
            await asyncio.sleep(0.01)
            await loop.sock_sendall(b, b"data")
            trace.append(await pending)
    same(scenario)


def test_sock_ops_refuse_an_fd_a_transport_owns(same):
    async def scenario(loop, trace):
        a, b = _pair()
        with b:
            transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
            for call in (lambda: loop.sock_recv(a, 10), lambda: loop.sock_recv_into(a, bytearray(10)),
                         lambda: loop.sock_sendall(a, b"x" * 10_000_000)):
                try:
                    trace.append(("ok", await call()))
                except Exception as e:
                    # The transport's class name is the one difference.
                    message = str(e).replace(str(a.fileno()), "FD").replace("_SelectorSocketTransport", "SocketTransport")
                    trace.append((type(e).__name__, message))
            transport.close()
            await asyncio.sleep(0)
    same(scenario)


def test_sendall_copies_mutable_data_it_queues(loop):
    a, b = _pair()
    with a, b:
        async def main():
            data = bytearray(b"x" * 8_000_000)
            send = asyncio.ensure_future(loop.sock_sendall(a, data))
            await asyncio.sleep(0)
            data[:] = b"y" * len(data)  # what asyncio's memoryview would refuse or send
            received = bytearray()
            while len(received) < 8_000_000:
                received += await loop.sock_recv(b, 1 << 20)
            await send
            return received.count(b"x") + received.count(b"y") == 8_000_000
        assert run(loop, main())


def test_sendall_to_closed_peer_raises_and_unregisters(same):
    async def scenario(loop, trace):
        a, b = _pair()
        with a:
            send = asyncio.ensure_future(loop.sock_sendall(a, b"z" * 10_000_000))
            await asyncio.sleep(0.01)
            b.close()
            try:
                await send
            except OSError as e:
                trace.append(type(e).__name__)
            # the fd is free for another registration
            loop.add_writer(a, lambda: None)
            trace.append(loop.remove_writer(a))
    same(scenario)


def test_cancel_pending_sendall_keeps_socket_usable(same):
    async def scenario(loop, trace):
        a, b = _pair()
        with a, b:
            send = asyncio.ensure_future(loop.sock_sendall(a, b"z" * 10_000_000))
            await asyncio.sleep(0.01)
            send.cancel()
            try:
                await send
            except asyncio.CancelledError:
                trace.append("cancelled")
            loop.add_writer(a, lambda: None)
            trace.append(loop.remove_writer(a))
            trace.append(loop.remove_reader(a))
    same(scenario)


# A sock_* wait is polled for one event; once over, its registration stays in
# epoll disabled and the next wait on the fd re-arms it (src/event_loop/
# fd_callbacks.rs, add_once). The fd table, fd reuse and the other fd APIs
# must not see the difference.

def test_fd_reused_after_a_wait_is_polled_again(same):
    async def scenario(loop, trace):
        for round in range(3):
            a, b = _pair()
            reader = asyncio.ensure_future(loop.sock_recv(a, 100))
            await asyncio.sleep(0.01)
            await loop.sock_sendall(b, b"round %d" % round)
            trace.append(await reader)
            # The fd number is taken again by the next socketpair.
            a.close()
            b.close()
    same(scenario)


def test_other_fd_apis_after_a_wait(same):
    async def scenario(loop, trace):
        a, b = _pair()
        with a, b:
            reader = asyncio.ensure_future(loop.sock_recv(a, 100))
            await asyncio.sleep(0.01)
            b.send(b"one")
            trace.append(await reader)
            trace.append(("remove after the wait", loop.remove_reader(a)))
            called = loop.create_future()
            loop.add_reader(a, lambda: called.done() or called.set_result(a.recv(100)))
            b.send(b"two")
            trace.append(await called)
            trace.append(("removed", loop.remove_reader(a)))
            # A wait, a cancelled wait, then a wait again.
            reader = asyncio.ensure_future(loop.sock_recv(a, 100))
            await asyncio.sleep(0.01)
            reader.cancel()
            await asyncio.sleep(0)
            trace.append(reader.cancelled())
            b.send(b"three")
            trace.append(await loop.sock_recv(a, 100))
            # A reader and a writer on the fd while a wait is pending.
            reader = asyncio.ensure_future(loop.sock_recv(a, 100))
            await asyncio.sleep(0.01)
            loop.add_writer(a, lambda: None)
            b.send(b"four")
            trace.append(await reader)
            trace.append((loop.remove_writer(a), loop.remove_reader(a)))
    same(scenario)


def test_sendall_waits_for_a_slow_reader_many_times(same):
    async def scenario(loop, trace):
        a, b = _pair()
        with a, b:
            payload = bytes(range(256)) * 16384   # 4 MiB: many partial sends
            send = asyncio.ensure_future(loop.sock_sendall(a, payload))
            received = bytearray()
            while len(received) < len(payload):
                await asyncio.sleep(0.001)
                received += await loop.sock_recv(b, 65536)
            await send
            trace.append(received == payload)
    same(scenario)


def test_closed_socket_with_a_live_duplicate_does_not_wake_the_loop(loop):
    """After a wait the registration stays in epoll, disabled; if the socket
    is closed while a duplicate keeps it open, data for it must neither wake
    the loop nor reach a new socket that takes the fd number."""
    import resource

    async def main():
        a, b = _pair()
        reader = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        b.send(b"x")
        assert await reader == b"x"
        duplicate = a.dup()
        a.close()
        b.send(b"unread data for the duplicate")
        c, d = _pair()       # may take a's fd number
        got = asyncio.ensure_future(loop.sock_recv(c, 100))
        before = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.sleep(0.3)
        after = resource.getrusage(resource.RUSAGE_SELF)
        spent = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        assert not got.done()
        d.send(b"mine")
        assert await got == b"mine"
        for s in (duplicate, b, c, d):
            s.close()
        return spent

    assert run(loop, main()) < 0.15
