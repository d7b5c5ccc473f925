"""Pipe transports (connect_read_pipe, connect_write_pipe, subprocess stdio),
differential: protocol callback order, data, EOF, pause/resume, flow control
marks, close/abort/write_eof, the read end closing, errors and warnings —
the same trace on ferroloop and on the standard loop."""

import asyncio
import gc
import io
import os
import re
import sys
import warnings

import pytest

from conftest import capture_log, outcome

PIPE_CAPACITY = 65536  # Linux's default; the same pipe on both loops anyway


class Recorder(asyncio.Protocol):
    """Records the callbacks it gets; received data is joined."""

    def __init__(self, trace, name=""):
        self.trace = trace
        self.name = name
        self.data = bytearray()
        self.lost = asyncio.get_running_loop().create_future()

    def _t(self, *event):
        self.trace.append((self.name, *event) if self.name else event)

    def connection_made(self, transport):
        self.transport = transport
        self._t("made", isinstance(transport, asyncio.ReadTransport), isinstance(transport, asyncio.WriteTransport))

    def data_received(self, data):
        self._t("data", len(data) > 0)
        self.data += data

    def eof_received(self):
        self._t("eof", bytes(self.data))

    def pause_writing(self):
        self._t("pause_writing", self.transport.get_write_buffer_size())

    def resume_writing(self):
        self._t("resume_writing", self.transport.get_write_buffer_size())

    def connection_lost(self, exc):
        self._t("lost", type(exc).__name__ if exc else None)
        self.lost.set_result(exc)


def _collapse(trace):
    """Consecutive ("data", True) events as one: how reads are split is the
    kernel's business, not the transport's."""
    out = []
    for ev in trace:
        if out and ev == out[-1] and ev[-2:] == ("data", True):
            continue
        out.append(ev)
    return out


async def _read_pipe(loop, trace, fd=None, name="r"):
    """A read transport on a new pipe (or on `fd`); returns the transport,
    the protocol, the pipe object and the other end's fd."""
    if fd is None:
        fd, other = os.pipe()
    else:
        other = None
    pipe = open(fd, "rb", buffering=0)
    transport, proto = await loop.connect_read_pipe(lambda: Recorder(trace, name), pipe)
    return transport, proto, pipe, other


async def _write_pipe(loop, trace, name="w"):
    r, w = os.pipe()
    os.set_blocking(r, False)
    pipe = open(w, "wb", buffering=0)
    transport, proto = await loop.connect_write_pipe(lambda: Recorder(trace, name), pipe)
    return transport, proto, pipe, r


async def _drain(r, nbytes=None, chunk=16384):
    """Read a non-blocking fd until EOF (or nbytes), yielding to the loop
    between reads."""
    data = bytearray()
    while nbytes is None or len(data) < nbytes:
        try:
            got = os.read(r, chunk)
        except BlockingIOError:
            await asyncio.sleep(0.001)
            continue
        if not got:
            break
        data += got
        await asyncio.sleep(0)
    return bytes(data)


async def _turns(n=5):
    for _ in range(n):
        await asyncio.sleep(0)


def _norm_repr(text):
    return re.sub(r"fd=\d+", "fd=N", re.sub(r"^<\w+", "<T", text))


# ----- read pipes ---------------------------------------------------------------

def test_read_pipe_data_then_eof_then_lost(same):
    async def scenario(loop, trace):
        fd, w = os.pipe()
        pipe = open(fd, "rb", buffering=0)
        fut = loop.create_task(loop.connect_read_pipe(lambda: Recorder(trace), pipe))
        fut.add_done_callback(lambda f: trace.append("connected"))
        transport, proto = await fut
        trace.append(("extra", transport.get_extra_info("pipe") is pipe, transport.get_extra_info("nope", 7)))
        # (3.10's read pipe has no is_reading(): NotImplementedError on both loops.)
        trace.append(("state", transport.is_closing(), outcome(transport.is_reading)))
        for i in range(20):
            os.write(w, b"x%d," % i)
            await _turns(2)
        os.close(w)
        await proto.lost
        trace.append(("data", bytes(proto.data)))
        trace.append(("after", transport.is_closing(), transport.get_protocol() is None, pipe.closed))
    same(scenario, normalize=_collapse)


def test_read_pipe_pause_resume(same):
    async def scenario(loop, trace):
        transport, proto, pipe, w = await _read_pipe(loop, trace)
        transport.pause_reading()
        transport.pause_reading()
        trace.append(("paused", transport._paused))
        os.write(w, b"while paused")
        await _turns(5)
        trace.append(("got while paused", bytes(proto.data)))
        transport.resume_reading()
        transport.resume_reading()
        await _turns(5)
        trace.append(("got", bytes(proto.data), transport._paused))
        transport.close()
        transport.resume_reading()
        transport.pause_reading()
        trace.append(("closing", transport.is_closing(), transport._paused))
        await proto.lost
        os.close(w)
    same(scenario)


def test_read_pipe_close_twice_and_closes_pipe_once(same):
    async def scenario(loop, trace):
        transport, proto, pipe, w = await _read_pipe(loop, trace)
        transport.close()
        transport.close()
        trace.append(("closing", transport.is_closing(), pipe.closed))
        await proto.lost
        trace.append(("closed", pipe.closed, _norm_repr(repr(transport))))
        # The fd number is free again: whatever gets it must stay open.
        r2, w2 = os.pipe()
        await _turns(5)
        gc.collect()
        trace.append(("reused fd intact", outcome(lambda: os.fstat(r2) and os.fstat(w2) and True)))
        os.close(r2), os.close(w2), os.close(w)
    same(scenario)


def test_read_pipe_exception_in_data_received_goes_to_handler(same):
    async def scenario(loop, trace):
        def handler(loop, context):
            exc = context.get("exception")
            trace.append(("handler", context["message"].startswith("Exception in callback"),
                          type(exc).__name__, str(exc)))
        loop.set_exception_handler(handler)

        class Bad(Recorder):
            def data_received(self, data):
                super().data_received(data)
                if len(self.data) < 3:
                    raise ZeroDivisionError("boom")

        fd, w = os.pipe()
        transport, proto = await loop.connect_read_pipe(lambda: Bad(trace), open(fd, "rb", buffering=0))
        os.write(w, b"a")
        await _turns(3)
        os.write(w, b"bc")
        await _turns(3)
        os.close(w)
        await proto.lost
        trace.append(bytes(proto.data))
    same(scenario)


def test_read_pipe_exceptions_in_eof_and_connection_lost(same):
    async def scenario(loop, trace):
        def handler(loop, context):
            exc = context.get("exception")
            trace.append(("handler", type(exc).__name__, str(exc)))
        loop.set_exception_handler(handler)

        class Bad(Recorder):
            def eof_received(self):
                super().eof_received()
                raise ValueError("eof")

            def connection_lost(self, exc):
                super().connection_lost(exc)
                raise KeyError("lost")

        fd, w = os.pipe()
        pipe = open(fd, "rb", buffering=0)
        transport, proto = await loop.connect_read_pipe(lambda: Bad(trace), pipe)
        os.close(w)
        await proto.lost
        await _turns(3)
        trace.append(("pipe closed anyway", pipe.closed))
    same(scenario)


def test_read_error_reports(same):
    """A read error (EBADF: the write end of a pipe given as a read pipe)
    goes to the exception handler as 'Fatal read error on pipe transport';
    EIO (a pty whose other side closed) is only a debug message."""
    async def scenario(loop, trace):
        def handler(loop, context):
            trace.append(("handler", context["message"], type(context.get("exception")).__name__,
                          context.get("transport") is transport))
        loop.set_exception_handler(handler)
        r, w = os.pipe()
        transport, proto, pipe, _ = await _read_pipe(loop, trace, fd=w)
        os.close(r)  # the write end polls as readable (an error) now
        trace.append(("lost with", type(await proto.lost).__name__))

        master, slave = os.openpty()
        transport, proto, pipe, _ = await _read_pipe(loop, trace, fd=master, name="pty")
        os.write(slave, b"hello")
        await _turns(5)
        os.close(slave)
        exc = await proto.lost
        trace.append(("pty lost with", type(exc).__name__, getattr(exc, "errno", None)))
    same(scenario, normalize=_collapse)


def test_read_pipe_debug_logs(same):
    async def scenario(loop, trace):
        with capture_log() as log:
            transport, proto, pipe, w = await _read_pipe(loop, trace)
            transport.pause_reading()
            transport.resume_reading()
            os.write(w, b"x")
            os.close(w)
            await proto.lost
        # (Not the loop's "Read pipe N connected" line: object addresses.)
        trace.extend((lvl, _norm_repr(msg)) for lvl, msg, _ in log.summary()
                     if msg.startswith("<"))
    same(scenario, debug=True)


# ----- write pipes --------------------------------------------------------------

def test_write_pipe_immediate_write_and_queued_remainder(same):
    payload = os.urandom(1024 * 1024)

    async def scenario(loop, trace):
        transport, proto, pipe, r = await _write_pipe(loop, trace)
        trace.append(("can_write_eof", transport.can_write_eof(), transport.get_write_buffer_limits()))
        transport.write(b"small")
        trace.append(("after small", transport.get_write_buffer_size(), os.read(r, 100)))
        transport.write(payload)
        trace.append(("queued", transport.get_write_buffer_size(), transport._protocol_paused))
        received = await _drain(r, len(payload))
        await _turns(3)
        trace.append(("received", received == payload, transport.get_write_buffer_size()))
        transport.close()
        await proto.lost
        os.close(r)
    same(scenario)


def test_write_pipe_flow_control_marks(same):
    """Many small writes into a full pipe: pause_writing at the write that
    crosses the high-water mark, resume_writing only once all was written."""
    chunk = os.urandom(8192)

    async def scenario(loop, trace):
        transport, proto, pipe, r = await _write_pipe(loop, trace)
        for i in range(30):
            transport.write(chunk if i % 3 else bytearray(chunk))
            trace.append(("wrote", i, transport.get_write_buffer_size()))
        received = await _drain(r, 30 * len(chunk), chunk=5000)
        await _turns(3)
        trace.append(("received", received == chunk * 30))
        # Lower marks: paused at once when the queue is above them.
        transport.write(memoryview(chunk * 20))
        trace.append(("queued", transport.get_write_buffer_size()))
        transport.set_write_buffer_limits(high=1000)
        trace.append(("limits", transport.get_write_buffer_limits(), transport._protocol_paused))
        trace.append(outcome(transport.set_write_buffer_limits, high=1, low=2))
        received = await _drain(r, 20 * len(chunk))
        await _turns(3)
        trace.append(("received", len(received)))
        transport.close()
        await proto.lost
        os.close(r)
    same(scenario)


def test_write_pipe_close_flushes_then_drops_writes(same):
    payload = os.urandom(3 * 1024 * 1024)

    async def scenario(loop, trace):
        transport, proto, pipe, r = await _write_pipe(loop, trace)
        transport.write(payload[:1000])
        transport.write(bytearray(payload[1000:5000]))
        transport.write(memoryview(payload)[5000:])
        transport.close()
        trace.append(("closing", transport.is_closing(), transport.get_write_buffer_size() > 0))
        with capture_log() as log:
            for _ in range(8):
                transport.write(b"dropped")
        trace.append(("dropped", transport._conn_lost, log.summary()))
        received = await _drain(r)
        await proto.lost
        trace.append(("received", received == payload, pipe.closed))
        os.close(r)
    same(scenario)


def test_write_pipe_abort_drops_queue(same):
    async def scenario(loop, trace):
        transport, proto, pipe, r = await _write_pipe(loop, trace)
        transport.write(b"x" * (1024 * 1024))
        trace.append(("queued", transport.get_write_buffer_size()))
        transport.abort()
        trace.append(("aborted", transport.get_write_buffer_size(), transport.is_closing()))
        await proto.lost
        received = await _drain(r)
        trace.append(("received", len(received), pipe.closed))
        os.close(r)
    same(scenario)


def test_write_pipe_abort_twice(same):
    """asyncio's _close is unguarded: a second abort() schedules
    _call_connection_lost again, which fails (reported) without closing
    anything twice; abort() after connection_lost raises."""
    async def scenario(loop, trace):
        def handler(loop, context):
            exc = context.get("exception")
            trace.append(("handler", type(exc).__name__, str(exc)))
        loop.set_exception_handler(handler)
        transport, proto, pipe, r = await _write_pipe(loop, trace)
        transport.abort()
        transport.abort()
        await proto.lost
        await _turns(3)
        trace.append(outcome(transport.abort))
        trace.append(("pipe", pipe.closed, transport._pipe))
        os.close(r)
    same(scenario)


@pytest.mark.parametrize("queued", [False, True])
def test_write_pipe_reader_closes(same, queued):
    async def scenario(loop, trace):
        transport, proto, pipe, r = await _write_pipe(loop, trace)
        if queued:
            transport.write(b"y" * (PIPE_CAPACITY * 3))
        os.close(r)
        exc = await proto.lost
        trace.append(("lost", repr(exc), transport.is_closing(), transport.get_write_buffer_size(), pipe.closed))
    same(scenario)


def test_write_after_reader_closed_is_broken_pipe(same):
    async def scenario(loop, trace):
        def handler(loop, context):
            trace.append(("handler", context["message"]))
        loop.set_exception_handler(handler)
        transport, proto, pipe, r = await _write_pipe(loop, trace)
        os.close(r)
        transport.write(b"now")  # before the loop notices: EPIPE from write(2)
        trace.append(("conn_lost", transport._conn_lost, transport.is_closing()))
        with capture_log() as log:
            for _ in range(7):
                transport.write(b"more")
        trace.append(("warnings", log.summary()))
        exc = await proto.lost
        trace.append(("lost", type(exc).__name__, exc.errno, str(exc)))
    same(scenario)


def test_write_eof(same):
    async def scenario(loop, trace):
        transport, proto, pipe, r = await _write_pipe(loop, trace)
        transport.write_eof()
        transport.write_eof()
        trace.append(("closing", transport.is_closing()))
        await proto.lost
        trace.append(("eof", os.read(r, 10), pipe.closed))
        os.close(r)

        transport, proto, pipe, r = await _write_pipe(loop, trace, name="w2")
        transport.write(b"z" * (PIPE_CAPACITY * 2))
        transport.write_eof()
        transport.write(b"dropped")
        trace.append(("queued", transport.get_write_buffer_size(), transport._conn_lost))
        received = await _drain(r)
        await proto.lost
        trace.append(("received", len(received)))
        os.close(r)
    same(scenario)


def test_write_pipe_protocol_errors_in_flow_control(same):
    async def scenario(loop, trace):
        def handler(loop, context):
            trace.append(("handler", context["message"], type(context["exception"]).__name__,
                          context["protocol"] is proto))
        loop.set_exception_handler(handler)

        class Bad(Recorder):
            def pause_writing(self):
                super().pause_writing()
                raise RuntimeError("pause")

            def resume_writing(self):
                super().resume_writing()
                raise RuntimeError("resume")

        r, w = os.pipe()
        os.set_blocking(r, False)
        transport, proto = await loop.connect_write_pipe(lambda: Bad(trace), open(w, "wb", buffering=0))
        transport.write(b"q" * (PIPE_CAPACITY * 3))
        await _drain(r, PIPE_CAPACITY * 3)
        await _turns(3)
        transport.close()
        await proto.lost
        os.close(r)
    same(scenario)


def test_write_pipe_type_errors(same):
    async def scenario(loop, trace):
        transport, proto, pipe, r = await _write_pipe(loop, trace)
        trace.append(outcome(transport.write, "text"))
        trace.append(outcome(transport.write, b""))
        trace.append(outcome(transport.writelines, [b"1", bytearray(b"2"), memoryview(b"3")]))
        trace.append(outcome(transport.write, memoryview(b"")[::2]))
        await _turns(3)
        trace.append(os.read(r, 100))
        transport.close()
        await proto.lost
        os.close(r)
    same(scenario)


def test_write_pipe_strided_memoryview(same):
    """asyncio's os.write() refuses a strided view: a fatal error (reported)
    when nothing is queued, a BufferError from write() when something is."""
    async def scenario(loop, trace):
        def handler(loop, context):
            trace.append(("handler", context["message"], type(context["exception"]).__name__))
        loop.set_exception_handler(handler)
        transport, proto, pipe, r = await _write_pipe(loop, trace)
        transport.write(b"a" * (PIPE_CAPACITY + 10))
        trace.append(outcome(transport.write, memoryview(b"abcdef")[::2]))
        trace.append(transport.get_write_buffer_size())
        await _drain(r, PIPE_CAPACITY + 10)
        await _turns(3)
        trace.append(outcome(transport.write, memoryview(b"abcdef")[::2]))
        trace.append(("lost", type(await proto.lost).__name__, transport._conn_lost))
        os.close(r)
    same(scenario)


def test_write_pipe_on_socket_detects_close(same):
    import socket

    async def scenario(loop, trace):
        a, b = socket.socketpair()
        transport, proto = await loop.connect_write_pipe(lambda: Recorder(trace), open(a.detach(), "wb", buffering=0))
        transport.write(b"hi")
        trace.append(b.recv(10))
        b.close()
        trace.append(("lost", type(await proto.lost).__name__))
    same(scenario)


# ----- checks, fds, FIFOs, warnings ---------------------------------------------

@pytest.mark.parametrize("kind", ["file", "dir"])
def test_bad_fd_types_raise_value_error(same, tmp_path, kind):
    path = tmp_path / "f"
    if kind == "file":
        path.write_bytes(b"data")
    else:
        path.mkdir()

    async def scenario(loop, trace):
        for connect in (loop.connect_read_pipe, loop.connect_write_pipe):
            f = _FdObject(os.open(path, os.O_RDONLY))
            trace.append(await _aoutcome(connect(lambda: Recorder(trace), f)))
            trace.append(("still open", f.closes, os.get_blocking(f.fd)))
            f.close()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        trace.append(("warnings", [str(w.message) for w in caught]))
    same(scenario)


class _FdObject:
    """A pipe-like object around any fd (open() refuses directories)."""

    def __init__(self, fd):
        self.fd = fd
        self.closes = 0

    def fileno(self):
        return self.fd

    def close(self):
        self.closes += 1
        os.close(self.fd)


async def _aoutcome(coro):
    try:
        return ("ok", await coro)
    except BaseException as e:
        return (type(e).__name__, str(e))


def test_many_transports_leak_no_fd(impl):
    loop = impl.new_event_loop()

    async def main():
        for _ in range(200):
            trace = []
            rt, rp, rpipe, w = await _read_pipe(loop, trace)
            wt, wp, wpipe, r = await _write_pipe(loop, trace)
            os.write(w, b"x")
            wt.write(b"y" * 100)
            if len(trace) % 2:
                wt.abort()
            else:
                wt.close()
            rt.close()
            os.close(w)
            await rp.lost
            await wp.lost
            os.close(r)

    try:
        before = len(os.listdir("/proc/self/fd"))
        loop.run_until_complete(main())
        gc.collect()
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        loop.close()


def test_fifo(same, tmp_path):
    path = str(tmp_path / "fifo")
    os.mkfifo(path)
    payload = os.urandom(512 * 1024)

    async def scenario(loop, trace):
        rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        rt, rp = await loop.connect_read_pipe(lambda: Recorder(trace, "r"), open(rfd, "rb", buffering=0))
        wt, wp = await loop.connect_write_pipe(lambda: Recorder(trace, "w"), open(wfd, "wb", buffering=0))
        wt.write(payload)
        wt.close()
        await wp.lost
        await rp.lost
        trace.append(("received", bytes(rp.data) == payload))
    same(scenario, normalize=_collapse)


def test_unclosed_transports_warn(same):
    def scenario(loop, trace):
        async def connect():
            rt, rp, rpipe, w = await _read_pipe(loop, trace)
            wt, wp, wpipe, r = await _write_pipe(loop, trace)
            return rt, wt, rpipe, wpipe, w, r

        rt, wt, rpipe, wpipe, w, r = loop.run_until_complete(connect())
        loop.close()
        trace.append(("repr after loop close", _norm_repr(repr(rt)), _norm_repr(repr(wt))))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del rt, wt
            gc.collect()
        trace.append(sorted((w.category.__name__, _norm_repr(str(w.message).split(" ", 2)[2]))
                            for w in caught))
        trace.append(("pipes closed by __del__", rpipe.closed, wpipe.closed))
        os.close(w), os.close(r)
    same(scenario)


# ----- subprocesses ---------------------------------------------------------------

CHILD = ("import sys; data = sys.stdin.buffer.read(); "
         "sys.stdout.buffer.write(data); sys.stderr.buffer.write(data[::-1])")


async def _communicate_big(loop, trace):
    payload = os.urandom(6 * 1024 * 1024)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(payload)
    trace.append(("communicate", out == payload, err == payload[::-1], proc.returncode))

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    for i in range(0, len(payload), 1 << 20):
        proc.stdin.write(payload[i:i + (1 << 20)])
        await proc.stdin.drain()
    proc.stdin.close()
    out = await proc.stdout.read()
    trace.append(("streamed", out == payload, await proc.wait()))

    # A child that never reads: communicate() ignores the broken pipe.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "print('bye')", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate(payload)
    trace.append(("ignored broken pipe", out, proc.returncode))


def test_subprocess_communicate_large(same):
    same(_communicate_big, timeout=60)


def test_subprocess_uses_rust_pipe_transports(impl):
    from ferroloop._pipe import ReadPipeTransport, WritePipeTransport

    async def main():
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        kinds = (type(proc._transport.get_pipe_transport(0)), type(proc._transport.get_pipe_transport(1)))
        out, _ = await proc.communicate(b"meow")
        return kinds, out

    kinds, out = impl.run(main())
    assert kinds == (WritePipeTransport, ReadPipeTransport)
    assert out == b"meow"
