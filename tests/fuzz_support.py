"""Machinery shared by the differential fuzz files (test_transport_fuzz.py,
test_pipe_fuzz.py, test_sock_fuzz.py, test_tls_fuzz.py).

Hypothesis settings (FUZZ_EXAMPLES, FUZZ_RANDOM), payload bytes and
digests; what goes into a trace besides the program's own entries (the
exception handler, the asyncio logger, tasks' outcomes); running a
scenario on both loops (check_same) and waiting helpers; the protocol that
records its callbacks and runs the reactions scripted for them (Recorder);
the bases of the program interpreters (Program; RecorderRun, shared by the
socket and TLS stream transports; StreamsAPIRun, by the streams API over
either) and the programs of a RecorderRun; the pytest.param builders of
edge cases and known differences. The transports' own calls, peers and
strategies stay in each file.

Derandomized, hypothesis seeds each @given test from its source (less
decorators, comments and blank lines): a change to a test function's body
changes its examples, which is why those bodies use the names they always
did.
"""

import array
import asyncio
import hashlib
import logging
import os
import random
import re
import socket
import sys
import warnings

import pytest
from hypothesis import HealthCheck
from hypothesis import strategies as st

from conftest import IMPL, impl_factory, outcome, stdlib_factory

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0")) or None
SETTINGS = dict(deadline=None, derandomize=not os.environ.get("FUZZ_RANDOM"), print_blob=True,
                database=None, suppress_health_check=list(HealthCheck))
STEP_TIMEOUT = 5.0
SMALL_BUDGET = 32 * 1024  # bytes left unread in an idle (not jammed) socket


def examples(n):
    """n examples, or FUZZ_EXAMPLES if set (hunting)."""
    return EXAMPLES or n


class Payload:
    """payload(seq, n): n bytes of a fixed random 4 MiB block (`.block`),
    from an offset that depends on seq."""

    def __init__(self, seed):
        self.block = random.Random(seed).randbytes(4 * 1024 * 1024)

    def __call__(self, seq, n):
        start = (seq * 7919) % 65536
        return self.block[start:start + n]

    def items(self, seq, sizes):
        """The items of a writelines(): one payload per size, from seq on."""
        return [self(seq + i, n) for i, n in enumerate(sizes)]


def digest(data):
    """(length, short hash): bytes in a trace."""
    return (len(data), hashlib.sha1(bytes(data)).hexdigest()[:10])


def as_kind(data, kind):
    """data as a bytes, bytearray, memoryview, a memoryview of 4-byte items
    ("ints": len() is not the byte count), or a str (misuse)."""
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(b"<" + data + b">")[1:-1]
    if kind == "str":
        return data.decode("latin-1")
    if kind == "ints":
        return memoryview(array.array("i", data[:len(data) // 4 * 4]))
    return data


def without_filler(data, filler):
    """data less the jam filler, (offset, length) pairs (its length depends
    on the kernel)."""
    out, pos = bytearray(), 0
    for offset, n in filler:
        out += data[pos:offset]
        pos = offset + n
    return out + data[pos:]


def all_out(transport, received, expected):
    """The peer received what it must, and the transport holds nothing more
    (or lost its connection)."""
    return len(received) >= len(expected) and (
        transport.get_write_buffer_size() == 0 or transport._conn_lost)


def received_summary(received, expected, filler=(), show_prefix=True):
    """How what a peer received compares with what it must receive:
    ("all", digest), ("prefix", digest, or None unless show_prefix: how much
    of a jammed buffer went out depends on the kernel) or ("CORRUPT",
    lengths, first difference). The digests leave the filler out."""
    if received == expected:
        return ("all", digest(without_filler(received, filler)))
    if expected.startswith(received):
        return ("prefix", digest(without_filler(received, filler)) if show_prefix else None)
    i = next((i for i, (a, b) in enumerate(zip(received, expected)) if a != b), None)
    return ("CORRUPT", len(received), len(expected), i)


# ---------------------------------------------------------------- recording

def norm_message(msg):
    """A handler or log message as compared: a callback's repr names the
    transport's class, and reprs hold addresses."""
    if msg.startswith("Exception in callback"):
        return "Exception in callback"
    return re.sub(r"<[^>]*>", "<...>", msg)


def record_handler(loop, trace):
    """What goes to the loop's exception handler goes into the trace."""
    def handler(loop, ctx):
        exc = ctx.get("exception")
        trace.append(("handler", norm_message(ctx["message"]), type(exc).__name__ if exc else None))
    loop.set_exception_handler(handler)


class record_log(logging.Handler):
    """Warnings of the asyncio logger go into `trace` (a list)."""

    def __init__(self, trace):
        super().__init__(logging.WARNING)
        self.trace = trace

    def emit(self, record):
        self.trace.append(("log", record.levelname, norm_message(record.getMessage())))

    def __enter__(self):
        logging.getLogger("asyncio").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("asyncio").removeHandler(self)


def recorded(run, program):
    """The scenario that runs run(loop, trace, program)() (an interpreter
    class) with the exception handler and the asyncio logger recorded in the
    trace."""
    async def scenario(loop, trace):
        record_handler(loop, trace)
        with record_log(trace):
            await run(loop, trace, program)()
    return scenario


def record_task(loop, trace, label, coro):
    """A task whose outcome goes in the trace when it is done (bytes as a
    digest; IncompleteReadError and LimitOverrunError with their details)."""
    def done(task):
        if task.cancelled():
            trace.append(("done", label, "cancelled"))
            return
        exc = task.exception()
        if exc is None:
            r = task.result()
            trace.append(("done", label, digest(r) if isinstance(r, bytes) else r))
        else:
            detail = (len(exc.partial), exc.expected) if isinstance(exc, asyncio.IncompleteReadError) else \
                exc.consumed if isinstance(exc, asyncio.LimitOverrunError) else None
            trace.append(("done", label, type(exc).__name__, str(exc), detail))
    task = loop.create_task(coro)
    task.add_done_callback(done)
    return task


# ------------------------------------------------------------------ running

def fresh_policy():
    """A new event loop policy (without the deprecation warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(None)


def run_trace(factory, scenario, timeout=60.0, new_policy=False):
    """The scenario's trace on a new loop; a crash is part of the trace.
    new_policy: a fresh policy before and after the run."""
    if new_policy:
        fresh_policy()
    loop = factory()
    trace = []
    try:
        loop.run_until_complete(asyncio.wait_for(scenario(loop, trace), timeout))
    except Exception as e:
        trace.append(("scenario raised", type(e).__name__, str(e)))
    finally:
        loop.close()
        if new_policy:
            fresh_policy()
    return trace


def check_same(scenario, timeout=60.0, new_policy=False, stdlib_must_finish=False):
    """Run the scenario on both loops; the traces must be equal.
    stdlib_must_finish: the program itself must run through on the standard
    loop (no "scenario raised", no "settle timeout")."""
    expected = run_trace(stdlib_factory, scenario, timeout, new_policy)
    if stdlib_must_finish:
        assert not any(isinstance(e, tuple) and e[0] == "scenario raised" or e == "settle timeout"
                       for e in expected), expected
    got = run_trace(impl_factory, scenario, timeout, new_policy)
    assert got == expected, f"\nferroloop: {got!r}\nasyncio:   {expected!r}"
    return expected


async def wait_until(predicate, timeout=STEP_TIMEOUT):
    """Sleep in steps of 1 ms until predicate(); False if it timed out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.001)
    return True


async def spin(n=5):
    """Let the loop run n iterations."""
    for _ in range(n):
        await asyncio.sleep(0)


async def until_still(state, rounds, sleeps, delay, quiet=lambda: True):
    """Sleep until state() stays the same over `sleeps` sleeps of `delay`
    seconds (and quiet()), at most `rounds` times."""
    for _ in range(rounds):
        before = state()
        for _ in range(sleeps):
            await asyncio.sleep(delay)
        if state() == before and quiet():
            break


async def jam_fd(fd, data, record):
    """Send `data` through a dup of the socket's fd until it would block
    (twice, 2 ms apart); record(n) after each send. False: the peer is
    gone."""
    with socket.socket(fileno=os.dup(fd)) as raw:
        raw.setblocking(False)
        quiet_rounds = 0
        while quiet_rounds < 2:
            sent = 0
            while True:
                try:
                    n = raw.send(data)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # the peer is gone
                    return False
                record(n)
                sent += n
            quiet_rounds = quiet_rounds + 1 if sent == 0 else 0
            await asyncio.sleep(0.002)
    return True


async def sendall(loop, sock, data, timeout=STEP_TIMEOUT):
    """loop.sock_sendall with a timeout: "ok", or the error's type name."""
    try:
        await asyncio.wait_for(loop.sock_sendall(sock, data), timeout)
    except (OSError, asyncio.TimeoutError) as e:
        return type(e).__name__
    return "ok"


# ---------------------------------------------------------------- protocols

class Everything:
    """A `reacted` set that holds every callback: no reactions."""

    def __contains__(self, item):
        return True


class Reacting:
    """The first call of each callback runs the reactions scripted for it in
    run.script (run.act(action, callback); "raise": ZeroDivisionError)."""

    def react(self, name):
        if name in self.reacted:
            return
        self.reacted.add(name)
        for action in self.run.script.get(name, ()):
            if action == "raise":
                self.run.trace.append(("react", name, "raise"))
                raise ZeroDivisionError(name)
            self.run.trace.append(("react", name, action, self.run.act(action, name)))


class Recorder(Reacting, asyncio.Protocol):
    """Records its callbacks of a stream transport in the run's trace (the
    entry for connection_made is run.made(transport)); pause/resume_writing
    only where run.exact."""

    def __init__(self, run):
        self.run = run
        self.data = bytearray()
        self.eof = False
        self.lost = asyncio.get_running_loop().create_future()
        self.reacted = set()

    def connection_made(self, transport):
        self.run.transport = transport
        self.run.trace.append(self.run.made(transport))
        self.react("connection_made")

    def data_received(self, data):
        self.data += data
        self.react("data_received")

    def eof_received(self):
        self.eof = True
        self.run.trace.append(("eof", len(self.data)))
        self.react("eof_received")
        return self.run.eof_return

    def pause_writing(self):
        if self.run.exact:
            self.run.trace.append("pause_writing")
            self.react("pause_writing")

    def resume_writing(self):
        if self.run.exact:
            self.run.trace.append("resume_writing")
            self.react("resume_writing")

    def connection_lost(self, exc):
        self.run.trace.append(("lost", type(exc).__name__ if exc else None))
        self.lost.set_result(None)
        self.react("connection_lost")


class BufferedRecorder(Recorder, asyncio.BufferedProtocol):
    """The same through get_buffer()/buffer_updated(), with buffers of
    run.buffer: (size, kind)."""

    def get_buffer(self, sizehint):
        self.react("get_buffer")
        size, kind = self.run.buffer
        self.buf = {"bytearray": lambda: bytearray(size),
                    "memoryview": lambda: memoryview(bytearray(size + 2))[1:-1],
                    "array": lambda: array.array("i", bytes(4 * size)),  # items of 4 bytes
                    "bytes": lambda: bytes(size)}[kind]()                # read-only: misuse
        return self.buf

    def buffer_updated(self, nbytes):
        self.data += memoryview(self.buf).cast("B")[:nbytes]
        self.react("buffer_updated")


# the callbacks a Recorder (a BufferedRecorder) reacts in; its buffers' kinds
CALLBACKS = ["connection_made", "data_received", "eof_received", "pause_writing",
             "resume_writing", "connection_lost"]
BUFFERED_CALLBACKS = CALLBACKS[:1] + ["get_buffer", "buffer_updated"] + CALLBACKS[2:]
BUFFER_KINDS = st.sampled_from(["bytearray", "memoryview", "array", "bytes"])


def recorder_program(draw, families, scripts, eof_returns, ops, buffer_sizes=None, **more):
    """A RecorderRun's program: family, script (drawn from scripts(the
    callbacks)), eof_return, the `more` in order, buffer (None unless
    buffer_sizes) and ops."""
    buffered = buffer_sizes is not None
    program = dict(family=draw(st.sampled_from(families)),
                   script=draw(scripts(BUFFERED_CALLBACKS if buffered else CALLBACKS)),
                   eof_return=draw(eof_returns))
    program.update((key, draw(strategy)) for key, strategy in more.items())
    program["buffer"] = draw(st.tuples(st.sampled_from(buffer_sizes), BUFFER_KINDS)) if buffered else None
    program["ops"] = draw(ops)
    return program


def replace_protocol(run, new):
    """run.transport.set_protocol(new), `new` reacting to nothing; it
    becomes run.proto. (outcome, whether it took)."""
    new.reacted = Everything()
    r = outcome(run.transport.set_protocol, new)
    run.proto = new
    run.protos.append(new)
    return r, run.transport.get_protocol() is new


# ----------------------------------------------------------------- programs

class Program:
    """Base of the program interpreters: the program's "ops", and its keys
    named in `fields`, become attributes. After each step, settle() runs the
    loop until what busy() says is due has happened ("settle timeout" in the
    trace if it does not within settle_timeout); run_ops() settles, then
    runs each op through step()."""

    fields = ()
    settle_timeout = STEP_TIMEOUT
    transport = None

    def __init__(self, loop, trace, program):
        self.loop, self.trace = loop, trace
        self.ops = program["ops"]
        for key in self.fields:
            setattr(self, key, program[key])

    def busy(self):
        return False

    async def settle(self):
        await spin()
        if not await wait_until(lambda: not self.busy(), timeout=self.settle_timeout):
            self.trace.append("settle timeout")
        await spin()

    async def run_ops(self):
        await self.settle()
        for op in self.ops:
            await self.step(op)


class RecorderRun(Program):
    """A program for one stream transport whose protocols are Recorders:
    its family, script (reactions per callback), eof_return and buffer (None:
    not buffered). A subclass gives made(), exact, known_difference(),
    write(), call(), size(), jam(), peer_read(), peer_op(), and keeps its
    protocols in self.protos."""

    fields = ("family", "script", "eof_return", "buffer")

    def act(self, action, callback=None):
        """One transport call (an op, or a reaction in `callback`); what it
        returned or raised ("skipped": a known difference)."""
        if self.known_difference(action, callback):
            return "skipped"
        name = action if isinstance(action, str) else action[0]
        if name in ("write", "writelines"):
            return self.write(action)
        return self.call(name, action)

    async def step(self, op):
        """One op, then settle. Big writes jam the socket first where exact;
        elsewhere the peer reads after each write."""
        name = op[0]
        if name in ("write", "writelines"):
            size = sum(op[1]) if name == "writelines" else op[1]
            if self.exact and not self.jammed and self.idle_unread + size > SMALL_BUDGET:
                await self.jam()
            self.trace.append((op, self.act(op)))
            if not self.exact:
                await self.peer_read(until_eof=False)
        elif name == "jam":
            await self.jam()
            self.trace.append((op, self.size()))
        elif name == "drain":
            self.trace.append((op, await self.peer_read(until_eof=False)))
        elif name.startswith("peer_"):
            self.trace.append((op, await self.peer_op(op)))
        elif name == "sleep":
            await spin(op[1])
        elif name == "set_protocol":
            self.trace.append((op, self.switch_protocol()))
        else:
            self.trace.append((op, self.act(op)))
        await self.settle()

    def delivered(self):
        """Bytes the protocols received."""
        return sum(len(p.data) for p in self.protos)

    def switch_protocol(self):
        """set_protocol() with a new recorder of the other kind (it reacts
        to nothing): "skip" once lost, else (outcome, whether it took)."""
        if self.proto.lost.done():
            return "skip"
        if isinstance(self.proto, BufferedRecorder):
            new = Recorder(self)
        else:
            new = BufferedRecorder(self)
            self.buffer = self.buffer or (4096, "bytearray")
        return replace_protocol(self, new)


class StreamsAPIRun(RecorderRun):
    """A program over the streams API (self.reader, self.writer, set up by
    the subclass's open()) and the peer of a RecorderRun: reads of every
    kind, drain and wait_closed run as tasks whose results go in the trace
    when done; the subclass's other_op() does the other ops (True: it
    settled)."""

    def __init__(self, loop, trace, program):
        super().__init__(loop, trace, dict(program, script={}, eof_return=None, buffer=None))
        self.limit = program["limit"]
        self.tasks = []
        self.reading = []

    def delivered(self):
        return 0  # unknown (the reader's buffer is consumed): the program's total is capped

    def busy(self):
        return False  # (the subclass's settle() waits for what is due)

    def start(self, label, coro):
        """A task whose outcome goes in the trace when it is done."""
        self.tasks.append(record_task(self.loop, self.trace, label, coro))

    async def step(self, op):
        name, r, w = op[0], self.reader, self.writer
        reads = {"read": r.read, "readexactly": r.readexactly, "readuntil": r.readuntil, "readline": r.readline}
        if name in reads:
            if any(not t.done() for t in self.reading):
                return  # one read at a time (a second one raises RuntimeError)
            self.start(op, reads[name](*op[1:]))
            self.reading.append(self.tasks[-1])
        elif name in ("drain", "wait_closed"):
            self.start(op, getattr(w, name)())
        elif name in ("at_eof", "can_write_eof", "is_closing"):
            obj = r if name == "at_eof" else w
            self.trace.append((op, outcome(getattr(obj, name))))
        elif await self.other_op(op):
            return
        await self.settle()

    async def close_all(self, peer_open, timeout=STEP_TIMEOUT):
        """The end: writer.close(), the peer reads until EOF (if peer_open),
        wait_closed() and the tasks finish; what the peer's read gave."""
        self.trace.append(("final close", outcome(self.writer.close)[0]))
        final_read = await self.peer_read(until_eof=True) if peer_open else None
        self.start("final wait_closed", self.writer.wait_closed())
        await asyncio.wait(self.tasks, timeout=timeout)
        await spin()
        return final_read

    def cancel_all(self):
        """Cancel the tasks left, abort the transport if it is not closing."""
        for task in self.tasks:
            task.cancel()
        if not self.transport.is_closing():
            self.transport.abort()


# ------------------------------------------------------------ pytest params

def known(id, scenario, reason, since=(3, 10), before=(4,)):
    """A known difference: a strict xfail on ferroloop where the Python
    version has it, skipped elsewhere and under a stand-in."""
    applies = since <= sys.version_info[:2] < before
    return pytest.param(scenario, id=id, marks=[
        pytest.mark.skipif(not applies, reason="no difference on this Python"),
        pytest.mark.skipif(IMPL is None or IMPL.name != "ferroloop", reason="ferroloop's differences"),
        pytest.mark.xfail(strict=True, reason="ferroloop differs: " + reason)])


def case(id, scenario, since=(3, 10)):
    """An edge case that must be the same (from Python `since` on)."""
    return pytest.param(scenario, id=id, marks=pytest.mark.skipif(
        sys.version_info[:2] < since, reason="not on this Python"))
