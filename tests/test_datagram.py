"""Datagram endpoints: what the protocol receives is exactly what was sent,
on ferroloop and on the standard loop alike (sizes from 0 bytes to beyond
a UDP datagram, interleaved senders, Unix datagram sockets)."""

import asyncio
import os
import socket
import tempfile


class Collect(asyncio.DatagramProtocol):
    def __init__(self, expected):
        self.got = []
        self.expected = expected
        self.done = asyncio.get_running_loop().create_future()

    def datagram_received(self, data, addr):
        self.got.append((data, type(addr).__name__))
        if len(self.got) == self.expected and not self.done.done():
            self.done.set_result(None)

    def error_received(self, exc):
        self.got.append(("error", type(exc).__name__))


def _payloads(limit):
    sizes = [0, 1, 1000, 1500, 9000, limit]
    return [os.urandom(n) for n in sizes]


async def _udp_scenario():
    loop = asyncio.get_running_loop()
    payloads = _payloads(65000)
    transport, proto = await loop.create_datagram_endpoint(
        lambda: Collect(len(payloads)), local_addr=("127.0.0.1", 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for p in payloads:
            sender.sendto(p, transport.get_extra_info("sockname"))
        await asyncio.wait_for(proto.done, 10)
    transport.close()
    return [(d == p, kind) for (d, kind), p in zip(proto.got, payloads)]


async def _unix_scenario():
    loop = asyncio.get_running_loop()
    payloads = _payloads(200_000)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dgram")
        transport, proto = await loop.create_datagram_endpoint(
            lambda: Collect(len(payloads)), local_addr=path, family=socket.AF_UNIX)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            for p in payloads:
                sender.sendto(p, path)
            await asyncio.wait_for(proto.done, 10)
        transport.close()
    return [(d == p, len(d), kind) for (d, kind), p in zip(proto.got, payloads)]


def test_udp_datagrams_arrive_intact(factories):
    results = {name: _run(f, _udp_scenario) for name, f in factories.items()}
    assert results["ferroloop"] == results["asyncio"]
    assert all(ok for ok, _ in results["ferroloop"])


def test_unix_datagrams_larger_than_udp_arrive_intact(factories):
    results = {name: _run(f, _unix_scenario) for name, f in factories.items()}
    assert results["ferroloop"] == results["asyncio"]
    assert all(ok for ok, _, _ in results["ferroloop"])


def _run(factory, scenario):
    loop = factory()
    try:
        return loop.run_until_complete(scenario())
    finally:
        loop.close()
