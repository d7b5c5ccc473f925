#!/usr/bin/env python3
"""The fixed TLS load generator of bench/servers.py (the `tls-*` cases).

    python bench/tls_client.py --addr 127.0.0.1:PORT --mode echo --size 1024 \\
        --conns 4 --warmup 0.15 --duration 1 --pid SERVER_PID

The same client for every loop: blocking `ssl` sockets, one thread per
connection (OpenSSL and the socket calls release the GIL), TLS 1.3 with the
default client context, no certificate verification.  Modes:

- echo: each thread keeps one TLS connection open and runs a closed loop:
  send SIZE bytes, read until exactly those bytes came back, repeat.
- handshake: each thread runs connect, TLS handshake, send SIZE bytes, read
  them back, close; one "message" is one whole connection.

After --warmup seconds the client reads the server's CPU time, counts the
messages completed for --duration seconds and reads the CPU time again.
It prints one JSON line in the same format as floor-client.
"""

import argparse
import json
import os
import socket
import ssl
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from servers import read_cpu  # noqa: E402


def _recv_exact(s, view, size):
    got = 0
    while got < size:
        k = s.recv_into(view[got:])
        if not k:
            raise ConnectionError(f"server closed the connection after {got} of {size} bytes")
        got += k


class Worker(threading.Thread):
    def __init__(self, args, ctx, state):
        super().__init__(daemon=True)
        self.args, self.ctx, self.state = args, ctx, state
        self.done = 0  # completed messages (read by the main thread)
        self.lat = []  # round-trip ns of the messages completed in the window
        self.error = None

    def connect(self):
        host, port = self.args.addr.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=5.0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.ctx.wrap_socket(sock, server_hostname="localhost")

    def run(self):
        size, state, clock = self.args.size, self.state, time.perf_counter_ns
        msg = os.urandom(size)
        buf = bytearray(size)
        view = memoryview(buf)
        handshake = self.args.mode == "handshake"
        s = None
        try:
            while not state["stop"]:
                t0 = clock()
                if s is None:
                    s = self.connect()
                s.sendall(msg)
                _recv_exact(s, view, size)
                if buf != msg:
                    raise ValueError("the echoed bytes differ from the sent ones")
                if handshake:
                    s.close()
                    s = None
                self.done += 1
                if state["window"]:
                    self.lat.append(clock() - t0)
        except Exception as e:  # noqa: BLE001
            self.error = f"{type(e).__name__}: {e}"
            state["stop"] = True
        finally:
            if s is not None:
                s.close()


def _pct(sorted_ns, p):
    if not sorted_ns:
        return None
    return sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * p / 100))] / 1e3


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", required=True, help="HOST:PORT of the TLS server")
    ap.add_argument("--mode", choices=("echo", "handshake"), required=True)
    ap.add_argument("--size", type=int, required=True, help="message size in bytes")
    ap.add_argument("--conns", type=int, required=True, help="concurrent connections (threads)")
    ap.add_argument("--warmup", type=float, required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--pid", type=int, required=True, help="the server, for its CPU time")
    args = ap.parse_args(argv)

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    state = {"stop": False, "window": False}
    workers = [Worker(args, ctx, state) for _ in range(args.conns)]
    for w in workers:
        w.start()
    time.sleep(args.warmup)
    cpu0, n0, t0 = read_cpu(args.pid), sum(w.done for w in workers), time.perf_counter()
    state["window"] = True
    time.sleep(args.duration)
    state["window"] = False
    cpu1, n1, t1 = read_cpu(args.pid), sum(w.done for w in workers), time.perf_counter()
    state["stop"] = True
    for w in workers:
        w.join(10.0)
    errors = [w.error for w in workers if w.error]
    lat = sorted(x for w in workers for x in w.lat)
    print(json.dumps({
        "msgs": n1 - n0, "seconds": t1 - t0, "p50_us": _pct(lat, 50), "p99_us": _pct(lat, 99),
        "server_cpu_ns": cpu1[2] - cpu0[2], "server_utime_ticks": cpu1[0] - cpu0[0],
        "server_stime_ticks": cpu1[1] - cpu0[1], "clk_tck": os.sysconf("SC_CLK_TCK"),
        "warmup_msgs": n0, "lost": 0, "error": errors[0] if errors else None,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
