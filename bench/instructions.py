#!/usr/bin/env python3
"""Server instructions per message, counted by valgrind's callgrind: a
deterministic companion to servers.py's CPU times, for changes of a few
percent that timing on a noisy machine cannot resolve.

    python bench/instructions.py [--cases http-close,http,tls,tls-hs,proto,stream,sock,udp] [--loops ferroloop,uvloop,asyncio]

Each (case, loop) starts `servers.py --serve` under callgrind, warms up,
zeroes the counters, sends --messages messages from a plain blocking client
in this process, and dumps the counters. It reports user-space instructions
(Ir) per message, the same from run to run to within a fraction of a
percent; the kernel's share (system calls, TCP) is not counted. Cases:

- http-close: one HTTP/1.1 request per connection (`Connection: close`);
- http:       HTTP/1.1 keep-alive requests on one connection;
- tls:        1 KiB echo round trips on one TLS connection;
- tls-hs:     one TLS connection (handshake, 1 KiB echo, close) per message;
- proto, stream, sock: 1 KiB echo round trips on one TCP connection, to a
  Protocol, a streams (StreamReader/StreamWriter) and a sock_recv/sock_sendall
  server;
- udp:        1 KiB datagram round trips to a create_datagram_endpoint echo.

Needs valgrind (Debian: `apt-get install valgrind`); callgrind runs the
server about 50 times slower, so a case takes seconds, not minutes.
"""

import argparse
import glob
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from servers import make_cert  # noqa: E402

REQUEST_CLOSE = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def http_close(address, n):
    for _ in range(n):
        with socket.create_connection(address) as s:
            s.sendall(REQUEST_CLOSE)
            while s.recv(65536):
                pass


def _read_response(s, buf):
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        rest += s.recv(65536)
    return rest[length:]


def http_keep_alive(address, n):
    with socket.create_connection(address) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        for _ in range(n):
            s.sendall(REQUEST)
            buf = _read_response(s, buf)


def _echo_round_trips(s, n, size):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message = b"x" * size
    for _ in range(n):
        s.sendall(message)
        got = 0
        while got < size:
            got += len(s.recv(65536))


def tls_echo(address, n, size=1024):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with context.wrap_socket(socket.create_connection(address)) as s:
        _echo_round_trips(s, n, size)


def tls_handshakes(address, n, size=1024):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for _ in range(n):
        with context.wrap_socket(socket.create_connection(address)) as s:
            _echo_round_trips(s, 1, size)


def tcp_echo(address, n, size=1024):
    with socket.create_connection(address) as s:
        _echo_round_trips(s, n, size)


def udp_echo(address, n, size=1024):
    message = b"x" * size
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(address)
        for _ in range(n):
            s.send(message)
            s.recv(65536)


# case -> (servers.py kind, client)
CASES = {"http-close": ("http-close", http_close), "http": ("http", http_keep_alive),
         "tls": ("tls", tls_echo), "tls-hs": ("tls", tls_handshakes), "proto": ("proto", tcp_echo), "stream": ("stream", tcp_echo),
         "sock": ("sock", tcp_echo), "udp": ("udp", udp_echo)}


def count(python, case, loop, messages, workdir, cert):
    """Ir per message of one (case, loop)."""
    kind, client = CASES[case]
    out = os.path.join(workdir, f"{case}-{loop}.%p")
    addr = cert if kind == "tls" else "-"
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python,
         os.path.join(HERE, "servers.py"), "--serve", kind, "tcp", loop, addr],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"{loop} server did not start: {line!r}")
        host, _, port = line.split()[1].rpartition(":")
        address = (host, int(port))
        client(address, max(messages // 5, 50))
        subprocess.run(["callgrind_control", "-z", str(server.pid)], check=True, capture_output=True)
        client(address, messages)
        subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True, capture_output=True)
    finally:
        server.kill()
        server.wait()
    # The dump after zeroing is part 1: "<out>.<pid>.1".
    dumps = glob.glob(out.replace("%p", f"{server.pid}.1"))
    if not dumps:
        raise RuntimeError(f"no callgrind dump for {case} on {loop}")
    with open(dumps[0]) as f:
        total = next(int(line.split()[1]) for line in f if line.startswith("summary:"))
    return total / messages


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--loops", default="ferroloop,uvloop,asyncio")
    ap.add_argument("--messages", type=int, default=1000, help="messages counted per case (default 1000)")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    cases = args.cases.split(",")
    loops = args.loops.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    with tempfile.TemporaryDirectory() as workdir:
        cert = make_cert(workdir)[0] if any(c.startswith("tls") for c in cases) else None
        print(f"user-space instructions per message (callgrind), {args.messages} messages")
        print(f"{'case':12s} " + " ".join(f"{loop:>12s}" for loop in loops)
              + "".join(f"  {'×' + loop:>10s}" for loop in loops[1:]))
        for case in cases:
            started = time.time()
            counts = [count(args.python, case, loop, args.messages, workdir, cert) for loop in loops]
            ratios = "".join(f"  {counts[0] / c:>10.2f}" for c in counts[1:])
            print(f"{case:12s} " + " ".join(f"{c:>12,.0f}" for c in counts) + ratios
                  + f"   ({time.time() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
