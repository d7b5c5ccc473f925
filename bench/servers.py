#!/usr/bin/env python3
"""Server benchmarks: ferroloop vs uvloop vs asyncio vs a Rust "floor" server.

    python bench/servers.py                   # full suite, ~10 min on 2 cores
    python bench/servers.py --quick           # smoke run: every server starts and stops
    python bench/servers.py --only 'tcp-proto-*,http-*' --repeats 5
    python bench/run.py --suite servers ...   # the same thing through the driver

Each server under test runs in its own process, pinned to one CPU (taskset,
--server-cpu, default 1).  The load comes from a separate process pinned to
the other CPU (--client-cpu, default 0) and is the same for every server:
bench/floor's Rust echo client (floor-client) for the echo cases, wrk for
HTTP, bench/tls_client.py (blocking `ssl`, a thread per connection) for the
TLS echo cases (the floor has no TLS server).  Per case and server the suite reports throughput (messages/s), p50/p99
round-trip latency and the server's CPU time per message (user+sys of the
server process over the measured window / messages), that CPU figure relative
to uvloop, and as a multiple of the floor: bench/floor's floor-server, a
single-threaded edge-triggered epoll server in Rust with the same wire
behaviour, i.e. (close to) the kernel's share that no event loop can avoid.

Repeats are interleaved (loop A, B, C, floor, A, B, C, floor, ...); medians
are reported.  See bench/README.md ("Server benchmarks").
"""

import argparse
import asyncio
import ctypes
import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import loops  # noqa: E402
from stats import fmt_rate, geomean, write_json  # noqa: E402

FLOOR_DIR = os.path.join(HERE, "floor")
FLOOR_BIN = os.path.join(FLOOR_DIR, "target", "release")
FLOOR = "floor"

# Must match HTTP_RESPONSE in bench/floor/src/bin/floor-server.rs.
HTTP_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n"
                 b"Content-Type: text/plain\r\n\r\nHello, World!")
READ_SIZE = 256 * 1024

KINDS = {
    "sock": "loop.sock_accept / sock_recv / sock_sendall echo",
    "stream": "asyncio.start_server echo (StreamReader.read / writer.write + drain)",
    "proto": "loop.create_server with an asyncio.Protocol echo (data_received -> write)",
    "udp": "create_datagram_endpoint echo (datagram_received -> sendto)",
    "http": "HTTP/1.1 keep-alive server, httptools parser, fixed 13-byte body",
    "http-close": "the same HTTP server, one connection per request (Connection: close)",
    "tls": "loop.create_server(ssl=...) Protocol echo, long-lived TLS connections",
    "tls-hs": "the same TLS echo server, one connection (handshake) per 1 KiB echo",
}
ECHO_SIZES_KIB = (1, 10, 100)
UDP_SIZES_KIB = (1, 10)  # a UDP datagram can't hold 100 KiB
CONNS = (1, 10)
TLS_SIZES_KIB = (1, 16)  # 16 KiB: one full TLS record
TLS_CONNS = (1, 4)  # the TLS client is Python: a thread per connection
TLS_KINDS = ("tls", "tls-hs")
HTTP_KINDS = ("http", "http-close")  # loaded by wrk


# ==========================================================================
# Server side: `servers.py --serve KIND TRANSPORT LOOP ADDR`
# ==========================================================================


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class EchoDatagram(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class HttpProtocol(asyncio.Protocol):
    def __init__(self):
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.error = httptools.HttpParserError

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except self.error:
            self.transport.close()

    def on_message_complete(self):
        self.transport.write(HTTP_RESPONSE)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def _stream_echo(reader, writer):
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _sock_echo(loop, conn):
    try:
        while True:
            data = await loop.sock_recv(conn, READ_SIZE)
            if not data:
                break
            await loop.sock_sendall(conn, data)
    except (ConnectionError, OSError):
        pass
    finally:
        conn.close()


async def _sock_accept_loop(loop, lsock, tcp):
    tasks = set()
    while True:
        conn, _ = await loop.sock_accept(lsock)
        conn.setblocking(False)
        if tcp:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = loop.create_task(_sock_echo(loop, conn))
        tasks.add(t)
        t.add_done_callback(tasks.discard)


async def _start(loop, kind, transport, addr):
    """Start listening; return the address to print after READY."""
    tcp = transport == "tcp"
    if kind == "udp":
        tr, _ = await loop.create_datagram_endpoint(EchoDatagram, local_addr=("127.0.0.1", 0))
        host, port = tr.get_extra_info("sockname")[:2]
        return f"{host}:{port}"
    if kind == "sock":
        lsock = socket.socket(socket.AF_INET if tcp else socket.AF_UNIX, socket.SOCK_STREAM)
        if tcp:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind(("127.0.0.1", 0))
        else:
            lsock.bind(addr)
        lsock.listen(128)
        lsock.setblocking(False)
        loop.create_task(_sock_accept_loop(loop, lsock, tcp))
        name = lsock.getsockname()
    else:
        if kind == "stream":
            srv = await (asyncio.start_server(_stream_echo, "127.0.0.1", 0) if tcp
                         else asyncio.start_unix_server(_stream_echo, addr))
        elif kind == "proto":
            srv = await (loop.create_server(EchoProtocol, "127.0.0.1", 0) if tcp
                         else loop.create_unix_server(EchoProtocol, addr))
        elif kind in HTTP_KINDS:
            srv = await loop.create_server(HttpProtocol, "127.0.0.1", 0)
        elif kind in TLS_KINDS:  # ADDR is the key+certificate PEM file
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(addr)
            srv = await loop.create_server(EchoProtocol, "127.0.0.1", 0, ssl=ctx)
        else:
            raise ValueError(f"unknown kind {kind!r}")
        name = srv.sockets[0].getsockname()
    return f"{name[0]}:{name[1]}" if tcp else addr


def serve_main(argv):
    kind, transport, loop_name, addr = argv
    loop = loops.new_loop(loop_name)
    asyncio.set_event_loop(loop)
    where = loop.run_until_complete(_start(loop, kind, transport, addr))
    print(f"READY {where}", flush=True)
    # Serves until the driver kills it (SIGTERM, default action).
    loop.run_forever()
    return 0


# ==========================================================================
# Driver side
# ==========================================================================


class Case:
    def __init__(self, kind, transport, size_kib, conns):
        self.kind, self.transport, self.size_kib, self.conns = kind, transport, size_kib, conns
        if kind in HTTP_KINDS or kind == "tls-hs":
            self.name = f"{kind}-c{conns}"
        elif kind in ("udp", "tls"):
            self.name = f"{kind}-{size_kib}k-c{conns}"
        else:
            self.name = f"{transport}-{kind}-{size_kib}k-c{conns}"

    @property
    def group(self):
        """Cases of one group share one set of running servers."""
        return (self.kind, self.transport)

    @property
    def floor_mode(self):
        """bench/floor's floor-server mode, or None: the floor has no TLS."""
        if self.kind in TLS_KINDS or self.kind == "http-close":
            return None  # the floor has no TLS, and its HTTP server never closes
        if self.kind == "http":
            return "http"
        if self.kind == "udp":
            return "udp"
        return f"echo-{self.transport}"


def all_cases():
    cases = []
    for transport in ("tcp", "unix"):
        for kind in ("sock", "stream", "proto"):
            for size in ECHO_SIZES_KIB:
                for c in CONNS:
                    cases.append(Case(kind, transport, size, c))
    for size in UDP_SIZES_KIB:
        for c in CONNS:
            cases.append(Case("udp", "udp", size, c))
    for c in CONNS:
        cases.append(Case("http", "tcp", None, c))
    for c in CONNS:
        cases.append(Case("http-close", "tcp", None, c))
    for size in TLS_SIZES_KIB:
        for c in TLS_CONNS:
            cases.append(Case("tls", "tcp", size, c))
    for c in TLS_CONNS:
        cases.append(Case("tls-hs", "tcp", 1, c))
    return cases


def quick_cases(cases):
    """One case per server group, the one of 1 KiB (or HTTP) with the most connections:
    every kind of server starts, serves and stops."""
    out = {}
    for c in cases:
        if c.size_kib in (None, 1) and (c.group not in out or c.conns > out[c.group].conns):
            out[c.group] = c
    return list(out.values())


def select(cases, only):
    pats = [p.strip() for p in only.split(",") if p.strip()]
    out = []
    for c in cases:
        for p in pats:
            if (any(ch in p for ch in "*?[") and fnmatch.fnmatchcase(c.name, p)) or \
                    (not any(ch in p for ch in "*?[") and p in c.name):
                out.append(c)
                break
    return out, [p for p in pats if not any(
        fnmatch.fnmatchcase(c.name, p) if any(ch in p for ch in "*?[") else p in c.name
        for c in cases)]


# ---- processes -----------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
_CHILDREN = []  # every Popen we started and have not reaped yet


def _child_setup():
    # Dies with the driver, even if the driver is SIGKILLed.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _spawn(cmd, **kw):
    p = subprocess.Popen(cmd, preexec_fn=_child_setup, **kw)
    _CHILDREN.append(p)
    return p


def _reap(p, grace=2.0):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for f in (p.stdout, p.stderr, p.stdin):
        if f:
            f.close()
    if p in _CHILDREN:
        _CHILDREN.remove(p)


def _reap_all():
    for p in list(_CHILDREN):
        _reap(p)


def read_cpu(pid):
    """(user ticks, sys ticks, on-CPU ns summed over the live threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ut, st = int(fields[11]), int(fields[12])
    ns = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return ut, st, ns


class Server:
    """One running server process (a loop's Python server, or the floor)."""

    def __init__(self, name, case, args, tmpdir):
        self.name = name
        self.dead = None
        tag = f"{case.kind}-{case.transport}-{name}"
        self.sock_path = os.path.join(tmpdir, f"{tag}.sock") if case.transport == "unix" else None
        if name == FLOOR:
            addr = self.sock_path or "127.0.0.1:0"
            cmd = [os.path.join(FLOOR_BIN, "floor-server"), case.floor_mode, addr]
        else:
            arg = args.tls_cert if case.kind in TLS_KINDS else self.sock_path or "-"
            cmd = [args.python, os.path.abspath(__file__), "--serve", case.kind, case.transport,
                   name, arg]
        cmd = ["taskset", "-c", str(args.server_cpu)] + cmd
        self.errfile = tempfile.TemporaryFile(dir=tmpdir)
        self.proc = _spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=self.errfile, text=True)
        self.pid = self.proc.pid  # taskset execs the server: same pid
        try:
            self.addr = self._wait_ready(timeout=30.0)
            if case.kind in TLS_KINDS:
                self._open_and_close_connections(args)
        except BaseException:
            self.stop()
            raise

    def _open_and_close_connections(self, args):
        """Before any measurement, some TLS connections come and go, as on a
        server that has been up a while. The allocator's state depends on it:
        glibc serves a large block by mmap until a block that large has been
        freed, and the TLS protocols allocate 256 KiB per read (asyncio's,
        uvloop's) or per connection; without this, whichever case runs first
        on a fresh server pays extra system calls for every message."""
        cmd = _pin(args.client_cpu) + [
            sys.executable, os.path.join(HERE, "tls_client.py"), "--mode", "handshake",
            "--addr", self.addr, "--size", "1024", "--conns", "1", "--warmup", "0",
            "--duration", "0.2", "--pid", str(self.pid)]
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=True)

    def _wait_ready(self, timeout):
        import select as _select

        deadline = time.monotonic() + timeout
        buf = ""
        fd = self.proc.stdout
        while time.monotonic() < deadline:
            r, _, _ = _select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            line = fd.readline()
            if not line:
                break
            buf += line
            if line.startswith("READY "):
                return line.split(None, 1)[1].strip()
        raise RuntimeError(f"server {self.name} did not start: {self.stderr_tail() or buf.strip()}")

    def stderr_tail(self):
        self.errfile.seek(0)
        text = self.errfile.read().decode(errors="replace").strip()
        return " | ".join(text.splitlines()[-3:])

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        _reap(self.proc)
        if not self.errfile.closed:
            self.errfile.close()
        if self.sock_path and os.path.exists(self.sock_path):
            os.unlink(self.sock_path)


TMP_PREFIX = "ferroloop-bench-"


def _sweep_stale_tmpdirs():
    """Remove the temp dirs (Unix socket files) of earlier drivers that were SIGKILLed."""
    base = tempfile.gettempdir()
    for name in os.listdir(base):
        if not name.startswith(TMP_PREFIX):
            continue
        try:
            pid = int(name[len(TMP_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def _pin(cpu):
    return ["taskset", "-c", str(cpu)]


def run_echo_client(server, case, args):
    """Loads `server` with floor-client, or for TLS with bench/tls_client.py (same options,
    same JSON output); returns one sample."""
    if case.kind in TLS_KINDS:
        client = [sys.executable, os.path.join(HERE, "tls_client.py"),
                  "--mode", "handshake" if case.kind == "tls-hs" else "echo"]
    else:
        client = [os.path.join(FLOOR_BIN, "floor-client"), "--drain-timeout", "5",
                  "--mode", "udp" if case.kind == "udp" else case.transport]
    cmd = _pin(args.client_cpu) + client + [
        "--addr", server.addr, "--size", str(case.size_kib * 1024), "--conns", str(case.conns),
        "--warmup", str(args.warmup), "--duration", str(args.duration),
        "--pid", str(server.pid)]
    limit = args.warmup + args.duration + 5 + 15
    p = _spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        _reap(p)
        raise RuntimeError(f"client timed out after {limit:.0f} s")
    _CHILDREN.remove(p)
    if p.returncode != 0:
        raise RuntimeError(f"client exit {p.returncode}: {err.strip()[-300:]}")
    r = json.loads(out.strip().splitlines()[-1])
    if r.get("error"):
        raise RuntimeError(f"client: {r['error']}")
    if r["msgs"] == 0:
        raise RuntimeError("no message completed in the measured window")
    return {
        "msgs": r["msgs"], "seconds": r["seconds"], "p50_us": r["p50_us"], "p99_us": r["p99_us"],
        "cpu_ns": r["server_cpu_ns"],
        "cpu_ticks": (r["server_utime_ticks"], r["server_stime_ticks"], r["clk_tck"]),
        "lost": r["lost"],
    }


_UNIT = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}


def run_wrk(server, case, args, duration=None):
    d = max(1, int(round(duration if duration is not None else args.duration)))
    cmd = _pin(args.client_cpu) + [
        args.wrk, "-t1", f"-c{case.conns}", f"-d{d}s", "--timeout", "2s", "--latency",
        f"http://{server.addr}/"]
    closing = case.kind == "http-close"
    if closing:
        cmd[-1:-1] = ["-H", "Connection: close"]
    before = read_cpu(server.pid)
    p = _spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=d + 20)
    except subprocess.TimeoutExpired:
        _reap(p)
        raise RuntimeError("wrk timed out")
    after = read_cpu(server.pid)
    _CHILDREN.remove(p)
    if p.returncode != 0:
        raise RuntimeError(f"wrk exit {p.returncode}: {(err or out).strip()[-300:]}")
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", out)
    if not m:
        raise RuntimeError(f"can't parse wrk output: {out.strip()[-300:]}")
    msgs, secs = int(m.group(1)), float(m.group(2)) * _UNIT[m.group(3)] / 1e6
    lat = {}
    for pct, val, unit in re.findall(r"^\s*(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M):
        lat[pct] = float(val) * _UNIT[unit]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise RuntimeError(f"wrk: {bad.group(1)} non-2xx responses")
    serr = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    # wrk counts the server's close after each response as a read error.
    if serr and any(int(x) for i, x in enumerate(serr.groups()) if not (closing and i == 1)):
        raise RuntimeError(f"wrk: {serr.group(0)}")
    if msgs == 0:
        raise RuntimeError("wrk completed no request")
    return {
        "msgs": msgs, "seconds": secs, "p50_us": lat.get("50"), "p99_us": lat.get("99"),
        "cpu_ns": after[2] - before[2],
        "cpu_ticks": (after[0] - before[0], after[1] - before[1], os.sysconf("SC_CLK_TCK")),
        "lost": 0,
    }


# ---- setup -----------------------------------------------------------------


class SetupError(Exception):
    pass


def ensure_wrk():
    path = shutil.which("wrk")
    if path:
        return path
    print("wrk not found: installing it (apt-get install -y wrk)", file=sys.stderr)
    if shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "install", "-y", "wrk"],
                    ["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
            r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=env)
            if cmd[1] == "install" and r.returncode == 0:
                break
        path = shutil.which("wrk")
    if not path:
        raise SetupError("the HTTP cases need wrk and it could not be installed "
                         "(apt-get install -y wrk failed or apt-get is missing; are you root?). "
                         "Install wrk or leave the HTTP cases out (e.g. --only 'tcp-*,unix-*,udp-*').")
    return path


def ensure_floor():
    cargo = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
    if not os.path.exists(cargo):
        raise SetupError("cargo not found: it is needed to build bench/floor "
                         "(the echo client and the floor server)")
    print("building bench/floor (cargo build --release) ...", file=sys.stderr)
    r = subprocess.run([cargo, "build", "--release", "--quiet",
                        "--manifest-path", os.path.join(FLOOR_DIR, "Cargo.toml")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise SetupError(f"cargo build --release in bench/floor failed:\n{r.stdout[-2000:]}")
    for b in ("floor-server", "floor-client"):
        if not os.access(os.path.join(FLOOR_BIN, b), os.X_OK):
            raise SetupError(f"bench/floor built, but {b} is missing")


def make_cert(tmpdir):
    """Writes a key+certificate PEM file for the TLS servers into tmpdir; returns
    (path, description).  A fresh self-signed EC P-256 certificate from the openssl CLI,
    or else a copy of CPython's own test certificate (RSA 3072)."""
    path = os.path.join(tmpdir, "keycert.pem")
    openssl = shutil.which("openssl")
    if openssl:
        r = subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                            "-subj", "/CN=localhost", "-keyout", path + ".key", "-out", path],
                           capture_output=True, text=True)
        if r.returncode == 0:
            with open(path + ".key") as key, open(path, "a") as out:
                out.write(key.read())
            return path, "self-signed EC P-256, made by openssl"
        print(f"warning: openssl req failed, using CPython's test certificate: "
              f"{r.stderr.strip()[-300:]}", file=sys.stderr)
    test_dir = os.path.join(sysconfig.get_paths()["stdlib"], "test")
    for rel in ("certdata/keycert.pem", "keycert.pem"):  # 3.12+, 3.10/3.11
        if os.path.exists(os.path.join(test_dir, rel)):
            shutil.copyfile(os.path.join(test_dir, rel), path)
            return path, f"CPython's test/{rel} (RSA 3072)"
    raise SetupError("the TLS cases need a certificate: install the openssl CLI, or an "
                     f"interpreter with its test package ({test_dir}/keycert.pem is missing)")


def ensure_httptools(python):
    ok = subprocess.run([python, "-c", "import httptools"], capture_output=True).returncode == 0
    if ok:
        return
    print(f"httptools missing in {python}: pip install httptools", file=sys.stderr)
    r = subprocess.run([python, "-m", "pip", "install", "-q", "httptools"],
                       capture_output=True, text=True)
    if r.returncode != 0 or subprocess.run([python, "-c", "import httptools"],
                                           capture_output=True).returncode != 0:
        raise SetupError(f"the HTTP cases need httptools in {python} and "
                         f"`pip install httptools` failed: {r.stderr.strip()[-500:]}")


# ---- report ----------------------------------------------------------------


def fmt_num(x, digits=3):
    if x is None:
        return "-"
    if x >= 1000:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def summarize(samples):
    if not samples:
        return None
    rates = [s["msgs"] / s["seconds"] for s in samples]
    cpu = [s["cpu_ns"] / 1e3 / s["msgs"] for s in samples]
    med = statistics.median
    return {
        "rate": med(rates),
        "rate_spread_pct": 100.0 * (max(rates) - min(rates)) / 2 / med(rates),
        "p50_us": med([s["p50_us"] for s in samples if s["p50_us"] is not None] or [0]),
        "p99_us": med([s["p99_us"] for s in samples if s["p99_us"] is not None] or [0]),
        "cpu_us": med(cpu),
        "cpu_spread_pct": 100.0 * (max(cpu) - min(cpu)) / 2 / med(cpu) if med(cpu) else 0.0,
        "server_cpu_util": med([s["cpu_ns"] / 1e9 / s["seconds"] for s in samples]),
        "lost": sum(s["lost"] for s in samples),
    }


def print_report(results, servers, args):
    refs = ("uvloop", "asyncio", FLOOR)  # the ×uvloop, ×asyncio and ×floor columns
    head = ["case", "server", "msg/s", "p50 µs", "p99 µs", "srv CPU", "CPU µs/msg"] + [
        f"×{x}" for x in refs]
    rows, seps = [], []
    for cname, entry in results.items():
        st = entry["servers"]
        ref = [(st.get(x) or {}).get("cpu_us") for x in refs]
        first = len(rows)
        for s in [s for s in servers if s in st]:  # no floor row for TLS
            r = st[s]
            name = cname if len(rows) == first else ""
            if r is None:
                rows.append([name, s, "FAILED" if entry["errors"].get(s) else "-"]
                            + ["-"] * (4 + len(refs)))
                continue
            rows.append([
                name, s,
                f"{fmt_rate(r['rate'])} ±{r['rate_spread_pct']:.0f}%",
                fmt_num(r["p50_us"]), fmt_num(r["p99_us"]),
                f"{100 * r['server_cpu_util']:.0f}%",
                f"{r['cpu_us']:.2f} ±{r['cpu_spread_pct']:.0f}%",
            ] + [f"{r['cpu_us'] / x:.2f}" if x else "-" for x in ref])
        seps.append(len(rows))
    widths = [max(len(str(x[j])) for x in [head] + rows) for j in range(len(head))]

    def line(cols):
        return "  ".join(str(c).ljust(w) if j < 2 else str(c).rjust(w)
                         for j, (c, w) in enumerate(zip(cols, widths))).rstrip()

    print()
    print(f"server benchmarks: median of {args.repeats} interleaved runs "
          f"(±: half the min-max spread); server on CPU {args.server_cpu}, load on CPU "
          f"{args.client_cpu}" + ("  [--quick: not meaningful]" if args.quick else ""))
    print("msg/s: messages (echo round trips, HTTP requests; for tls-hs-*: whole TLS "
          "connections) per second.  srv CPU: server CPU use during the window.")
    print("CPU µs/msg: server user+sys CPU per message.  ×uvloop, ×asyncio, ×floor: CPU "
          "µs/msg relative to uvloop's, asyncio's and the Rust floor server's (lower is better).")
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for k, row in enumerate(rows):
        print(line(row))
        if k + 1 in seps[:-1] and len(servers) > 1:
            print()
    # geometric means over the cases that have both figures
    print()
    summary = {}
    for s in servers:
        if s == FLOOR:
            continue
        g = {x: geomean([e["servers"][s]["cpu_us"] / e["servers"][x]["cpu_us"]
                         for e in results.values()
                         if e["servers"].get(s) and e["servers"].get(x)]) for x in refs}
        summary[s] = {f"cpu_vs_{x}": g[x] for x in refs}
        print(f"geomean CPU/msg of {s:9}: " + ", ".join(
            f"{'%.2f' % g[x] if g[x] else '-':>5} × {x}" for x in refs if x != s))
    return summary


# ---- main -----------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="servers.py",
        description="Server benchmarks: each loop's echo/HTTP servers in a process pinned to "
        "one CPU, loaded by a fixed client (bench/floor's floor-client, or wrk) pinned to the "
        "other; throughput, p50/p99 latency and server CPU time per message, against "
        "uvloop and a Rust epoll floor server.")
    ap.add_argument("--loops", default=",".join(loops.LOOP_NAMES),
                    help="comma-separated loops (default: %(default)s); the floor is added "
                    "unless --no-floor")
    ap.add_argument("--no-floor", action="store_true", help="leave out the Rust floor server")
    ap.add_argument("--only", default="",
                    help="comma-separated case names or globs, e.g. 'tcp-proto-*,http-*'; a "
                    "name without * ? [ matches as a substring (see --list)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="interleaved runs per (case, server); median reported (default 3, "
                    "1 with --quick)")
    ap.add_argument("--duration", type=float, default=None,
                    help="measured seconds per run (default 1.0, 0.2 with --quick; wrk rounds "
                    "to whole seconds, at least 1)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="unmeasured seconds before each window (default 0.15, 0.05 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: one case per server kind, 1 short run each (< 1 min); "
                    "with --only, the --only cases instead")
    ap.add_argument("--server-cpu", type=int, default=1, help="CPU for the servers (default 1)")
    ap.add_argument("--client-cpu", type=int, default=0,
                    help="CPU for the load generator and this driver (default 0)")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter for the Python servers (default: this one)")
    ap.add_argument("--json", metavar="FILE", help="also write every sample and the medians as JSON")
    ap.add_argument("--require", action="store_true",
                    help="fail instead of skipping when a requested loop cannot be imported")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.duration is None:
        args.duration = 0.2 if args.quick else 1.0
    if args.warmup is None:
        args.warmup = 0.05 if args.quick else 0.15
    if args.repeats < 1 or args.duration <= 0 or args.warmup < 0:
        ap.error("--repeats and --duration must be positive, --warmup >= 0")
    return ap, args


def main(argv):
    ap, args = parse_args(argv)
    cases = all_cases()
    if args.list:
        for c in cases:
            print(f"{c.name:22} {KINDS[c.kind]}")
        return 0
    if args.only:
        cases, unknown = select(cases, args.only)
        if unknown:
            ap.error(f"--only: no case matches {', '.join(unknown)} (see --list)")
    elif args.quick:
        cases = quick_cases(cases)

    ncpu = os.cpu_count() or 1
    for opt in ("server_cpu", "client_cpu"):
        if getattr(args, opt) >= ncpu:
            ap.error(f"--{opt.replace('_', '-')} {getattr(args, opt)}: this machine has {ncpu} CPU(s)")
    if args.server_cpu == args.client_cpu:
        print("warning: server and client share one CPU: the figures measure the scheduler too",
              file=sys.stderr)
    if not shutil.which("taskset"):
        print("error: taskset (util-linux) not found", file=sys.stderr)
        return 1

    import run  # the micro driver: loop probing

    requested = [x.strip() for x in args.loops.split(",") if x.strip()]
    bad = [x for x in requested if x not in loops.FACTORIES]
    if bad:
        ap.error(f"unknown loop(s): {', '.join(bad)}; known: {', '.join(loops.FACTORIES)}")
    descriptions, skipped = {}, {}
    for name in requested:
        ok, info = run.probe(args.python, name)
        if ok:
            descriptions[name] = info
        else:
            skipped[name] = info
            print(f"skipping {name}: not usable with {args.python}: {info}", file=sys.stderr)
    if skipped and args.require:
        return 1
    servers = [x for x in requested if x in descriptions]
    if not args.no_floor:
        servers.append(FLOOR)
    if not servers:
        print("no usable server", file=sys.stderr)
        return 1

    try:
        ensure_floor()
        args.wrk = ensure_wrk() if any(c.kind in HTTP_KINDS for c in cases) else None
        if any(c.kind in HTTP_KINDS for c in cases) and len(servers) > (0 if args.no_floor else 1):
            ensure_httptools(args.python)
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    # The driver shares the load generator's CPU, so it never disturbs the servers'.
    os.sched_setaffinity(0, {args.client_cpu})

    print(f"python: {args.python}, {ncpu} CPUs, {len(cases)} cases x {len(servers)} servers x "
          f"{args.repeats} repeats, {args.duration:g} s windows"
          f"{', QUICK' if args.quick else ''}", file=sys.stderr)
    for name in servers:
        print(f"  {name}: {descriptions.get(name, 'bench/floor floor-server (Rust, mio)')}",
              file=sys.stderr)
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        print(f"warning: load average {load_before[0]:.2f} before starting: other work is "
              f"running, expect noisy numbers", file=sys.stderr)

    started = time.time()
    results = {}
    failures = 0
    _sweep_stale_tmpdirs()
    tmpdir = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-")
    old_term = signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    args.tls_cert = cert_info = None
    try:
        if any(c.kind in TLS_KINDS for c in cases):
            args.tls_cert, cert_info = make_cert(tmpdir)
            print(f"  TLS certificate: {cert_info}", file=sys.stderr)
        groups = {}
        for c in cases:
            groups.setdefault(c.group, []).append(c)
        done = 0
        for group, gcases in groups.items():
            running = {}
            # the floor has no TLS server
            gservers = [s for s in servers if s != FLOOR or gcases[0].floor_mode]
            try:
                for s in gservers:
                    try:
                        running[s] = Server(s, gcases[0], args, tmpdir)
                    except Exception as e:  # noqa: BLE001
                        running[s] = None
                        failures += 1
                        print(f"  {group[0]}/{group[1]} server {s} FAILED to start: {e}",
                              file=sys.stderr)
                if group[0] in HTTP_KINDS and not args.quick:
                    for s, srv in running.items():  # one unmeasured warm-up run each
                        if srv:
                            try:
                                run_wrk(srv, gcases[0], args, duration=1)
                            except Exception:  # noqa: BLE001
                                pass  # the measured runs report it
                for case in gcases:
                    done += 1
                    t0 = time.perf_counter()
                    samples = {s: [] for s in gservers}
                    errors = {s: [] for s in gservers}
                    for _rep in range(args.repeats):
                        for s in gservers:  # interleaved: A B C floor A B C floor ...
                            srv = running.get(s)
                            if srv is None or errors[s]:
                                continue
                            try:
                                if not srv.alive():
                                    raise RuntimeError(f"server died: {srv.stderr_tail()}")
                                if case.kind in HTTP_KINDS:
                                    res = run_wrk(srv, case, args)
                                else:
                                    res = run_echo_client(srv, case, args)
                                samples[s].append(res)
                            except Exception as e:  # noqa: BLE001
                                failures += 1
                                errors[s].append(str(e))
                                print(f"  {case.name} on {s} FAILED: {e}", file=sys.stderr)
                                if not srv.alive():
                                    print(f"    server {s} exited: {srv.stderr_tail()}",
                                          file=sys.stderr)
                    entry = {"kind": case.kind, "transport": case.transport,
                             "size_kib": case.size_kib, "conns": case.conns,
                             "servers": {}, "errors": errors, "samples": samples}
                    for s in gservers:
                        entry["servers"][s] = summarize(samples[s])
                    results[case.name] = entry
                    cells = "  ".join(
                        f"{s} {entry['servers'][s]['cpu_us']:.2f}" if entry["servers"][s]
                        else f"{s} FAILED" for s in gservers)
                    print(f"[{done}/{len(cases)}] {case.name}: CPU µs/msg {cells}  "
                          f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
            finally:
                for srv in running.values():
                    if srv:
                        srv.stop()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        _reap_all()
        shutil.rmtree(tmpdir, ignore_errors=True)
        signal.signal(signal.SIGTERM, old_term)

    summary = print_report(results, servers, args) if results else {}
    if skipped:
        print("skipped: " + ", ".join(f"{k} ({v})" for k, v in skipped.items()))
    if failures:
        print(f"{failures} run(s) FAILED (see above)")
    print(f"({time.time() - started:.0f} s)", file=sys.stderr)

    if args.json:
        meta = {
            "suite": "servers",
            "python": args.python,
            "cpu_count": ncpu,
            "repeats": args.repeats,
            "duration": args.duration,
            "warmup": args.warmup,
            "quick": args.quick,
            "server_cpu": args.server_cpu,
            "client_cpu": args.client_cpu,
            "servers": servers,
            "loops": descriptions,
            "tls_certificate": cert_info,
        }
        write_json(args.json, meta, started, load_before, failures, skipped,
                   cases=results, geomean=summary)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        sys.exit(serve_main(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
