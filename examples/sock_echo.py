"""An echo server and concurrent clients on raw non-blocking sockets
(loop.sock_accept / sock_recv / sock_sendall / sock_connect), with timers
and a thread pool call, to show ferroloop doing real I/O."""

import asyncio
import hashlib
import socket
import sys

import ferroloop


async def serve_client(loop, conn):
    with conn:
        while data := await loop.sock_recv(conn, 65536):
            await loop.sock_sendall(conn, data)


async def server(loop, listener):
    tasks = set()
    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(False)
        task = asyncio.create_task(serve_client(loop, conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def client(loop, address, n, size):
    payload = bytes(range(256)) * (size // 256)
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
        for _ in range(n):
            await loop.sock_sendall(sock, payload)
            received = bytearray()
            while len(received) < len(payload):
                received += await loop.sock_recv(sock, 65536)
            assert received == payload, "echo mismatch"
    return hashlib.sha256(payload).hexdigest()[:12]


async def main():
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    address = listener.getsockname()
    server_task = asyncio.create_task(server(loop, listener))
    digests = await asyncio.gather(*(client(loop, address, 50, 64 * 1024) for _ in range(8)))
    info = await loop.getaddrinfo("127.0.0.1", address[1], type=socket.SOCK_STREAM)
    square = await loop.run_in_executor(None, pow, 12, 2)
    server_task.cancel()
    listener.close()
    print(f"loop: {type(loop).__module__}.{type(loop).__name__}")
    print(f"8 clients x 50 round trips of 64 KiB echoed intact ({digests[0]}), "
          f"getaddrinfo -> {info[0][4]}, executor -> {square}")


if __name__ == "__main__":
    ferroloop.run(main())
    sys.exit(0)
