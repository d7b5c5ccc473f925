"""getaddrinfo / getnameinfo must give exactly what the standard loop gives."""

import socket

import pytest

HAS_IPV6 = socket.has_ipv6
try:
    socket.getaddrinfo("::1", 0, socket.AF_INET6)
except OSError:
    HAS_IPV6 = False


def _gai_outcome(loop, *args, **kwargs):
    try:
        res = loop.run_until_complete(loop.getaddrinfo(*args, **kwargs))
        return ("ok", sorted(res, key=repr))
    except socket.gaierror as e:
        return ("gaierror", e.errno)
    except Exception as e:
        return (type(e).__name__, str(e))


def _gni_outcome(loop, *args):
    try:
        return ("ok", loop.run_until_complete(loop.getnameinfo(*args)))
    except socket.gaierror as e:
        return ("gaierror", e.errno)
    except Exception as e:
        return (type(e).__name__, str(e))


GAI_CASES = [
    (("127.0.0.1", 80), {}),
    (("127.0.0.1", "80"), {}),
    (("127.0.0.1", None), {}),
    ((b"127.0.0.1", 8080), {}),
    (("127.0.0.1", 0), {"type": socket.SOCK_STREAM}),
    (("127.0.0.1", 53), {"type": socket.SOCK_DGRAM}),
    (("127.0.0.1", 53), {"proto": socket.IPPROTO_UDP}),
    (("0.0.0.0", 0), {"family": socket.AF_INET}),
    ((None, 80), {"flags": socket.AI_PASSIVE}),
    ((None, 80), {}),
    (("localhost", 80), {}),
    (("localhost", 80), {"family": socket.AF_INET,
                         "type": socket.SOCK_STREAM}),
    (("localhost", "http"), {"type": socket.SOCK_STREAM}),
    (("127.0.0.1", 80), {"flags": socket.AI_NUMERICHOST
                         | socket.AI_CANONNAME}),
    (("not-an-ip", 80), {"flags": socket.AI_NUMERICHOST}),
    (("127.0.0.1", "no-such-service-xyz"), {}),
    (("127.0.0.1", 80), {"family": 12345}),
]
if HAS_IPV6:
    GAI_CASES += [
        (("::1", 443), {}),
        (("::1", 443), {"family": socket.AF_INET6,
                        "type": socket.SOCK_STREAM}),
        (("::", 0), {"flags": socket.AI_PASSIVE}),
    ]


@pytest.mark.parametrize("args,kwargs", GAI_CASES,
                         ids=[repr(c) for c in GAI_CASES])
def test_getaddrinfo_same_as_stdlib(factories, args, kwargs):
    results = {}
    for name, factory in factories.items():
        loop = factory()
        try:
            results[name] = _gai_outcome(loop, *args, **kwargs)
        finally:
            loop.close()
    assert results["ferroloop"] == results["asyncio"]
    if results["asyncio"][0] == "ok":
        direct = sorted(socket.getaddrinfo(*args, **kwargs), key=repr)
        assert results["ferroloop"][1] == direct


def test_getaddrinfo_result_types(loop):
    res = loop.run_until_complete(loop.getaddrinfo("127.0.0.1", 80,
                                                   type=socket.SOCK_STREAM))
    assert isinstance(res, list)
    fam, typ, proto, canon, addr = res[0]
    assert fam is socket.AF_INET and isinstance(fam, socket.AddressFamily)
    assert typ is socket.SOCK_STREAM and isinstance(typ, socket.SocketKind)
    assert isinstance(proto, int) and isinstance(canon, str)
    assert addr == ("127.0.0.1", 80)


GNI_CASES = [
    (("127.0.0.1", 80), 0),
    (("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
    (("127.0.0.1", 8080), socket.NI_NUMERICSERV),
    (("127.0.0.1", 53), socket.NI_DGRAM),
    pytest.param(("127.0.0.1",), 0, marks=pytest.mark.uvloop_differs(
        "uvloop raises ValueError"), id="short-sockaddr"),
    (("not-an-ip", 80), socket.NI_NUMERICHOST),
]
if HAS_IPV6:
    GNI_CASES += [(("::1", 80, 0, 0), socket.NI_NUMERICHOST
                   | socket.NI_NUMERICSERV)]


@pytest.mark.parametrize("sockaddr,flags", GNI_CASES)
def test_getnameinfo_same_as_stdlib(factories, sockaddr, flags):
    results = {}
    for name, factory in factories.items():
        loop = factory()
        try:
            results[name] = _gni_outcome(loop, sockaddr, flags)
        finally:
            loop.close()
    assert results["ferroloop"] == results["asyncio"]


def test_concurrent_getaddrinfo(loop):
    import asyncio

    async def main():
        return await asyncio.gather(*(
            loop.getaddrinfo("127.0.0.1", p, type=socket.SOCK_STREAM)
            for p in range(1000, 1050)))
    res = loop.run_until_complete(main())
    assert [r[0][4][1] for r in res] == list(range(1000, 1050))
