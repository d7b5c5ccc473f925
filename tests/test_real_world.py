"""A real framework on ferroloop: an aiohttp server and client (HTTP
bodies of many sizes, a streamed response, a websocket), with the same
results as on the standard loop."""

import asyncio

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402


async def _hello(request):
    body = await request.read()
    return web.Response(text=f"hello {len(body)}")


async def _stream(request):
    response = web.StreamResponse()
    await response.prepare(request)
    for i in range(50):
        await response.write(bytes([i]) * 10_000)
    await response.write_eof()
    return response


async def _websocket(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        await ws.send_str("echo:" + message.data)
    return ws


def test_aiohttp_server_and_client(same):
    async def scenario(loop, trace):
        app = web.Application()
        app.router.add_post("/", _hello)
        app.router.add_get("/stream", _stream)
        app.router.add_get("/ws", _websocket)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = "http://127.0.0.1:%d" % site._server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession() as session:
                responses = await asyncio.gather(*[session.post(url + "/", data=b"a" * n)
                                                   for n in range(0, 300_000, 30_000)])
                trace.append([(r.status, await r.text()) for r in responses])
                streamed = await (await session.get(url + "/stream")).read()
                trace.append((len(streamed), streamed == b"".join(bytes([i]) * 10_000 for i in range(50))))
                async with session.ws_connect(url + "/ws") as ws:
                    for text in ("one", "two"):
                        await ws.send_str(text)
                        trace.append((await ws.receive()).data)
        finally:
            await runner.cleanup()
    same(scenario)
