"""asyncio streams read through ferroloop's transports, differential: the
transports feed asyncio's own StreamReaderProtocol/StreamReader in Rust
(src/transport/stream_reader.rs), so here the reader's flow control, its
waiter, subclasses and patched methods, and the error cases must look
exactly as on the standard loop."""

import asyncio
import gc
import socket

import pytest

FAMILIES = ["tcp", "unix"]


async def _open(loop, family, **kwargs):
    """(reader, writer) of asyncio.open_connection and a non-blocking peer."""
    if family == "unix":
        ours, peer = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours, **kwargs)
    else:
        listener = socket.create_server(("127.0.0.1", 0))
        reader, writer = await asyncio.open_connection(*listener.getsockname(), **kwargs)
        peer, _ = listener.accept()
        listener.close()
    peer.setblocking(False)
    return reader, writer, peer


async def _until(predicate):
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


async def _close(writer, peer):
    """Close both ends; what wait_closed() raised, if anything."""
    writer.close()
    peer.close()
    try:
        await writer.wait_closed()
    except Exception as e:
        return type(e).__name__


def _connection_with(loop, protocol_factory):
    """A transport for protocol_factory's protocol over a socketpair."""
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    return loop.connect_accepted_socket(protocol_factory, ours), peer


def _errors(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    return contexts


def _summary(contexts):
    return [(c["message"], type(c.get("exception")).__name__, str(c.get("exception"))) for c in contexts]


@pytest.mark.parametrize("family", FAMILIES)
def test_reader_pauses_and_resumes_the_transport(same, family):
    async def scenario(loop, trace):
        reader, writer, peer = await _open(loop, family, limit=1000)
        for size in (700, 1400, 2100):
            await loop.sock_sendall(peer, b"a" * 700)
            await _until(lambda: len(reader._buffer) == size)
            trace.append((size, writer.transport.is_reading(), reader._paused))
        await loop.sock_sendall(peer, b"b" * 700)
        await asyncio.sleep(0.05)
        trace.append(("held back while paused", len(reader._buffer)))
        trace.append(len(await reader.read(1500)))
        trace.append(("resumed", writer.transport.is_reading(), reader._paused))
        await _until(lambda: len(reader._buffer) == 1300)
        trace.append(await reader.readexactly(1300) == b"a" * 600 + b"b" * 700)
        await _close(writer, peer)
    same(scenario)


@pytest.mark.parametrize("limit, sizes", [(100.5, (201, 1)), (2 ** 70, (5000,)), (True, (2, 1))])
def test_reader_limit_of_other_number_types(same, limit, sizes):
    async def scenario(loop, trace):
        reader, writer, peer = await _open(loop, "unix", limit=limit)
        total = 0
        for size in sizes:
            total += size
            await loop.sock_sendall(peer, b"x" * size)
            await _until(lambda: len(reader._buffer) == total)
            trace.append((total, reader._paused, writer.transport.is_reading()))
        await _close(writer, peer)
    same(scenario)


def test_waiter_cancelled_before_data_arrives(same):
    async def scenario(loop, trace):
        reader, writer, peer = await _open(loop, "unix")
        pending = asyncio.ensure_future(reader.read(100))
        await asyncio.sleep(0)
        pending.cancel()
        await loop.sock_sendall(peer, b"late")
        await asyncio.sleep(0.01)
        trace.append((pending.cancelled(), reader._waiter is None, bytes(reader._buffer)))
        trace.append(await reader.read(100))
        await _close(writer, peer)
    same(scenario)


def test_subclasses_and_patched_methods_are_called(same):
    calls = []

    class CountingReader(asyncio.StreamReader):
        def feed_data(self, data):
            calls.append(("subclass feed_data", len(data)))
            super().feed_data(data)

    class CountingProtocol(asyncio.StreamReaderProtocol):
        def data_received(self, data):
            calls.append(("subclass data_received", len(data)))
            super().data_received(data)

    async def exchange(loop, reader, protocol_factory):
        connecting, peer = _connection_with(loop, protocol_factory)
        transport, _ = await connecting
        await loop.sock_sendall(peer, b"12345")
        await _until(lambda: len(reader._buffer) == 5)
        transport.close()
        peer.close()

    async def scenario(loop, trace):
        calls.clear()
        reader = CountingReader(loop=loop)
        await exchange(loop, reader, lambda: asyncio.StreamReaderProtocol(reader, loop=loop))
        reader = asyncio.StreamReader(loop=loop)
        await exchange(loop, reader, lambda: CountingProtocol(reader, loop=loop))

        original = asyncio.StreamReader.feed_data
        def patched(self, data):
            calls.append(("patched class", len(data)))
            original(self, data)
        asyncio.StreamReader.feed_data = patched
        try:
            reader = asyncio.StreamReader(loop=loop)
            await exchange(loop, reader, lambda: asyncio.StreamReaderProtocol(reader, loop=loop))
        finally:
            asyncio.StreamReader.feed_data = original

        reader = asyncio.StreamReader(loop=loop)
        reader.feed_data = lambda data: (calls.append(("instance", len(data))), original(reader, data))
        await exchange(loop, reader, lambda: asyncio.StreamReaderProtocol(reader, loop=loop))
        trace.append(list(calls))
    same(scenario)


def test_reader_without_a_transport_to_pause(same):
    class CannotPause:
        def pause_reading(self):
            raise NotImplementedError

    async def scenario(loop, trace):
        reader, writer, peer = await _open(loop, "unix", limit=10)
        reader._transport = CannotPause()
        await loop.sock_sendall(peer, b"y" * 50)
        await _until(lambda: len(reader._buffer) == 50)
        trace.append((reader._transport, reader._paused, writer.transport.is_reading()))
        await _close(writer, peer)
    same(scenario)


def test_reader_collected_drops_data(same):
    async def scenario(loop, trace):
        contexts = _errors(loop)
        connecting, peer = _connection_with(
            loop, lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), loop=loop))
        transport, protocol = await connecting
        gc.collect()
        trace.append(protocol._stream_reader)
        await loop.sock_sendall(peer, b"nobody reads this")
        await asyncio.sleep(0.01)
        trace.append((transport.is_closing(), _summary(contexts)))
        transport.close()
        peer.close()
    same(scenario)


def test_errors_while_feeding_go_to_the_handler(same):
    async def scenario(loop, trace):
        contexts = _errors(loop)
        # The reader's buffer is exported: extending it fails.
        reader, writer, peer = await _open(loop, "unix")
        view = memoryview(reader._buffer)
        await loop.sock_sendall(peer, b"data")
        await _until(lambda: writer.transport.is_closing())
        view.release()
        trace.append((_summary(contexts), bytes(reader._buffer)))
        trace.append(await _close(writer, peer))
        contexts.clear()
        # Data after feed_eof() trips feed_data's assertion.
        reader, writer, peer = await _open(loop, "unix")
        reader.feed_eof()
        await loop.sock_sendall(peer, b"more")
        await _until(lambda: writer.transport.is_closing())
        trace.append((_summary(contexts)[0][:2], bytes(reader._buffer)))
        trace.append(await _close(writer, peer))
    same(scenario)


def test_streams_echo_many_sizes(same):
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def scenario(loop, trace):
        server = await asyncio.start_server(echo, "127.0.0.1", 0, limit=4096)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname(), limit=4096)
        sent = b"".join(bytes([i % 251]) * (i * 97 % 20000 + 1) for i in range(60))
        writer.write(sent)
        writer.write_eof()
        received = await reader.read()
        trace.append((len(received), received == sent))
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    same(scenario)
