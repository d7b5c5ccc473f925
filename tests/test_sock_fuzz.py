"""Hypothesis-driven differential fuzzing of the low-level socket API
(loop.sock_*) and of the fd callbacks (add_reader/add_writer and removal).

Random programs run on ferroloop and on the standard loop; the traces must be
equal: what each call returned or raised (type and message, with addresses,
fd numbers and paths replaced by names), the callbacks in order, what reached
the exception handler and the asyncio logger, the bytes each side received.

Properties:
  * test_sock_programs: sock_recv, sock_recv_into, sock_recvfrom(_into),
    sock_sendall, sock_sendto, sock_sendfile, sock_connect, sock_accept on
    TCP and Unix stream sockets and on UDP and Unix datagram sockets;
    operations run as tasks, several at once on the same socket, are
    cancelled (before and after their data arrived), time out, meet a peer
    that closes, shuts down or resets; blocking sockets in debug mode; bad
    arguments and addresses; operations on a closed socket. At the end no
    data may be lost or duplicated beyond what the standard loop does.
  * test_fd_callback_programs: add_reader/add_writer/remove_* with ints,
    sockets and objects with fileno(), invalid fds, fds owned by a
    transport, callbacks with arguments that raise, remove themselves or
    the other direction, consume their data or register again; fds closed
    while registered.

Determinism: a program records only what asyncio guarantees.
  * The peer is a plain socket driven by the program. After each step the
    loop runs until the operation that holds the socket's registration (the
    last one started that had to wait) cannot make progress; operations it
    displaced wait forever, on both loops.
  * On TCP a write may be taken in at any time (window updates): the peer
    reads after each send of ours, and how much of a cancelled send went out
    is not compared.
  * Callbacks of different fds ready in the same iteration run in the
    selector's order: the callbacks of a step are compared as a sorted list,
    and a callback's actions only touch its own fd.
  * Known differences are skipped by the programs and kept as strict xfails
    (test_known_differences).

The ferroloop differences the programs found (now fixed) are pinned as
scenarios in test_found_bugs. Huge nbytes for sock_recv once aborted
ferroloop's process: test_recv_huge_nbytes runs them in a child
interpreter, the programs do not draw them.

The machinery shared with the other fuzz files (settings, payloads, trace
recording, check_same, the Program interpreter base, known()/case()) is in
fuzz_support.py.

Hunting: FUZZ_EXAMPLES=3000 FUZZ_RANDOM=1 FERROLOOP_TEST_TIMEOUT=3000.
"""

import array
import asyncio
import os
import re
import select
import socket
import struct
import sys
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fuzz_support
from conftest import outcome, run_python
from fuzz_support import (
    SETTINGS, STEP_TIMEOUT, Payload, Program, as_kind, case, digest, examples, known, record_log, spin)
from fuzz_support import norm_message as _norm_message  # the name the @given tests use

PY311 = sys.version_info >= (3, 11)

payload = Payload(seed=4321)
PEER_UNREAD_MAX = 48 * 1024   # bytes the peer may send that we have not read
DGRAM_UNREAD_MAX = 6          # datagrams likewise (unix datagram queues are short)
SHORT = 0.05                  # wait_for timeouts of operations that cannot finish


def check_same(scenario):
    """fuzz_support.check_same; the program itself must run through on the
    standard loop."""
    return fuzz_support.check_same(scenario, stdlib_must_finish=True)


def ready(sock, events):
    """Whether poll reports `events` (or an error/hang-up) for the socket now."""
    fd = sock.fileno()
    if fd < 0:
        return False
    p = select.poll()
    p.register(fd, events)
    return bool(p.poll(0))


def linger0(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# ============================================================== sock_* calls

READ_OPS = ("recv", "recv_into", "recvfrom", "recvfrom_into")
WRITE_OPS = ("sendall", "sendto", "sendfile")


class Op:
    """An operation started as a task."""

    def __init__(self, n, op, direction):
        self.n, self.op, self.dir = n, op, direction
        self.task = None
        self.buf = None


class SockRun(Program):
    """Interprets a program against one socket of ours and a plain peer."""

    fields = ("family",)
    settle_timeout = 2.0

    def __init__(self, loop, trace, program, tmp):
        super().__init__(loop, trace, program)
        self.tmp = tmp
        self.stream = self.family in ("tcp", "unix")
        self.exact = self.family != "tcp"
        self.started = []
        self.live = {}               # direction -> the Op holding the registration
        self.seq = 0
        self.peer_sent = bytearray() if self.stream else []
        self.got = bytearray() if self.stream else []
        self.peer_got = bytearray() if self.stream else []
        self.peer_state = "open"
        self.ours_closed = False
        self.reset = False           # the connection was reset: what was lost is timing
        self.partial_send = False    # a send of ours was cut short (its extent is kernel's)
        self.names = {}
        self.closeme = []

    # ------------------------------------------------------------ naming
    def name(self, addr):
        if addr in self.names:
            return self.names[addr]
        if isinstance(addr, str) and addr.startswith(self.tmp):
            return "TMP" + addr[len(self.tmp):]
        if isinstance(addr, tuple) and len(addr) == 2 and addr[0] == "127.0.0.1":
            return "some port"
        return addr

    def clean(self, text):
        text = str(text).replace(self.tmp, "TMP")
        for addr, label in self.names.items():
            if isinstance(addr, tuple):
                text = text.replace(repr(addr), label).replace(str(addr[1]), label)
        return re.sub(r"<[^>]*>", "<...>", text)

    def exc(self, e):
        return (type(e).__name__, self.clean(e))

    # ------------------------------------------------------------- setup
    async def open(self):
        if self.stream:
            if self.family == "tcp":
                self.listener = socket.socket()
                self.listener.bind(("127.0.0.1", 0))
                self.refusing = socket.socket()      # bound, not listening: refuses
                self.refusing.bind(("127.0.0.1", 0))
            else:
                self.listener = socket.socket(socket.AF_UNIX)
                self.listener.bind(os.path.join(self.tmp, "listener"))
                self.refusing = socket.socket(socket.AF_UNIX)
                self.refusing.bind(os.path.join(self.tmp, "refusing"))
            self.listener.listen(8)
            self.listener.setblocking(False)
            self.names[self.listener.getsockname()] = "listener"
            self.names[self.refusing.getsockname()] = "refusing"
            self.ours = socket.socket(self.listener.family)
            self.ours.setblocking(False)
            accept = self.loop.create_task(self.loop.sock_accept(self.listener))
            await spin(1)
            self.trace.append(("connect", self.result(await self.call(
                self.loop.sock_connect(self.ours, self.listener.getsockname())))))
            self.peer, addr = await asyncio.wait_for(accept, STEP_TIMEOUT)
            if self.family == "tcp":
                self.names[self.ours.getsockname()] = "ours"
            self.trace.append(("accepted", self.name(addr), self.peer.gettimeout()))
        else:
            unix = self.family == "unixdgram"
            fam = socket.AF_UNIX if unix else socket.AF_INET
            self.ours = socket.socket(fam, socket.SOCK_DGRAM)
            self.peer = socket.socket(fam, socket.SOCK_DGRAM)
            self.refusing = socket.socket(fam, socket.SOCK_DGRAM)
            for s, label in ((self.ours, "ours"), (self.peer, "peer"), (self.refusing, "gone")):
                s.bind(os.path.join(self.tmp, label) if unix else ("127.0.0.1", 0))
                self.names[s.getsockname()] = label
            self.gone = self.refusing.getsockname()
            self.refusing.close()
            self.peer.connect(self.ours.getsockname())
            self.ours.setblocking(False)
        self.peer.setblocking(False)

    async def call(self, coro):
        try:
            return ("ok", await asyncio.wait_for(coro, STEP_TIMEOUT))
        except (Exception, asyncio.CancelledError) as e:
            return ("raised", e)

    def result(self, r):
        kind, v = r
        if kind == "raised":
            return self.exc(v)
        return ("ok", self.clean(v) if v is not None else None)

    # -------------------------------------------------------- operations
    def coro(self, op, o=None):
        """The coroutine for a sock_* operation (None: skipped)."""
        loop, s, name = self.loop, self.ours, op[0]
        self.seq += 1
        if name == "recv":
            return loop.sock_recv(s, op[1])
        if name == "recv_into":
            o.buf = self.make_buffer(op[1], op[2])
            return loop.sock_recv_into(s, o.buf)
        if name == "recvfrom":
            return loop.sock_recvfrom(s, op[1])
        if name == "recvfrom_into":
            o.buf = self.make_buffer(op[1], "bytearray")
            return loop.sock_recvfrom_into(s, o.buf, *(() if op[2] is None else (op[2],)))
        if name == "sendall":
            o.data = payload(self.seq, op[1])
            o.arg = as_kind(o.data, op[2])
            return loop.sock_sendall(s, o.arg)
        if name == "sendto":
            o.data = payload(self.seq, op[1])
            addr = {"peer": self.names_rev("peer"), "gone": getattr(self, "gone", None),
                    "bad": ("127.0.0.1", 70000), "none": None}[op[2]]
            return loop.sock_sendto(s, o.data, addr)
        if name == "sendfile":
            _, size, offset, count, fallback = op
            path = os.path.join(self.tmp, f"file{self.seq}")
            with open(path, "wb") as f:
                f.write(payload(self.seq, size))
            o.file = open(path, "rb")
            self.closeme.append(o.file)
            o.data = payload(self.seq, size)[offset:None if count is None else offset + count]
            return loop.sock_sendfile(s, o.file, offset, count, fallback=fallback)
        raise AssertionError(op)

    def names_rev(self, label):
        if label == "peer" and self.stream:
            label = "listener"  # where the peer's end is
        return next(a for a, n in self.names.items() if n == label)

    @staticmethod
    def make_buffer(size, kind):
        if kind == "memoryview":
            return memoryview(bytearray(size + 2))[1:-1]
        if kind == "bytes":
            return bytes(size)               # read-only: misuse
        if kind == "array":
            return array.array("i", bytes(4 * size))
        return bytearray(size)

    def finished(self, o):
        """Done callback of an operation's task: its outcome in the trace."""
        t = o.task
        if t.cancelled():
            self.trace.append(("done", o.n, "cancelled"))
            return
        e = t.exception()
        if e is not None:
            if isinstance(e, ConnectionResetError):
                self.reset = True
            self.trace.append(("done", o.n, self.exc(e)))
            return
        r = t.result()
        name = o.op[0]
        if name == "recv":
            self.take(r)
            shown = digest(r)
        elif name == "recv_into":
            data = bytes(memoryview(o.buf).cast("B")[:r]) if isinstance(r, int) else b""
            self.take(data)
            shown = r
        elif name == "recvfrom":
            self.take(r[0])
            shown = (digest(r[0]), self.name(r[1]))
        elif name == "recvfrom_into":
            self.take(bytes(o.buf[:r[0]]))
            shown = (r[0], self.name(r[1]))
        else:
            shown = r
        self.trace.append(("done", o.n, "ok", shown))

    def take(self, data):
        if self.stream:
            self.got += data
        else:
            self.got.append(bytes(data))

    async def start(self, op, wrap=None):
        """Start the operation as a task; if it has to wait, it now holds the
        registration for its direction."""
        direction = "r" if op[0] in READ_OPS else "w"
        o = Op(len(self.started), op, direction)
        coro = self.coro(op, o)
        if wrap is not None:
            coro = asyncio.wait_for(coro, wrap)
        o.task = self.loop.create_task(coro)
        o.task.add_done_callback(lambda t: self.finished(o))
        self.started.append(o)
        self.trace.append(("start", o.n, op))
        await spin(3)
        if not o.task.done():
            self.live[direction] = o
        return o

    def pending(self):
        return [o for o in self.started if not o.task.done()]

    def busy(self):
        """The operation holding a registration can make progress."""
        for direction, o in self.live.items():
            if o.task.done() or self.ours_closed:
                continue
            if o.op[0] == "accept":
                if ready(self.listener, select.POLLIN):
                    return True
            elif ready(self.ours, select.POLLIN if direction == "r" else select.POLLOUT):
                return True
        return False

    # -------------------------------------------------------------- peer
    def unread(self):
        """Bytes (stream) or datagrams the peer sent that we have not read."""
        return len(self.peer_sent) - len(self.got)

    def peer_send(self, n):
        if self.peer_state != "open":
            return "skip"
        if self.unread() + (n if self.stream else 1) > (PEER_UNREAD_MAX if self.stream else DGRAM_UNREAD_MAX):
            return "skip"
        self.seq += 1
        data = payload(self.seq, n)
        try:
            sent = self.peer.send(data)
        except OSError as e:
            return type(e).__name__
        if self.stream:
            self.peer_sent += data[:sent]
            return "ok" if sent == n else "short"
        self.peer_sent.append(data)
        return "ok"

    async def peer_read(self, until_done=False):
        """The peer reads what is there (on TCP, also until our send is done)."""
        if self.peer_state == "closed":
            return "skip"
        writer = self.live.get("w")
        while True:
            try:
                data = self.peer.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                if until_done and writer is not None and not writer.task.done() \
                        and not self.ours_closed:
                    await asyncio.sleep(0.001)
                    continue
                if until_done:
                    await spin()
                    if outcome(self.peer.recv, 1, socket.MSG_PEEK)[0] == "ok":
                        continue
                return "ok"
            except OSError as e:
                return type(e).__name__
            if self.stream:
                if not data:
                    return "eof"
                self.peer_got += data
            else:
                self.peer_got.append(data)
            await spin(1)

    # ------------------------------------------------------------- steps
    async def step(self, op):
        name = op[0]
        if name in READ_OPS or name in WRITE_OPS:
            if self.ours_closed and name == "sendfile":
                self.trace.append((op, "skip"))  # would open a file under the old number
                return
            o = await self.start(op)
            if o.dir == "w" and not self.exact:
                await self.peer_read(until_done=True)
        elif name == "timeout":
            o = await self.start(op[1], wrap=SHORT)
            await asyncio.wait([o.task], timeout=STEP_TIMEOUT)
        elif name == "cancel":
            pending = [o for o in self.pending() if o.op[0] != "user_cb"]
            if not pending:
                self.trace.append((op, "skip"))
            else:
                o = pending[op[1] % len(pending)]
                if o.dir == "w" and o.op[0] != "sendto":
                    self.partial_send = True
                self.trace.append((op, o.n, o.task.cancel()))
        elif name == "send_cancel":
            # the peer sends, the loop runs `spins` iterations, then the
            # waiting receive is cancelled: no data may be lost or duplicated
            o = self.live.get("r")
            r = self.peer_send(op[1])
            await spin(op[2])
            if o is None or o.task.done():
                self.trace.append((op, r, "nothing to cancel"))
            else:
                self.trace.append((op, r, o.n, o.task.cancel()))
        elif name == "peer_send":
            self.trace.append((op, self.peer_send(op[1])))
        elif name == "peer_read":
            self.trace.append((op, await self.peer_read(until_done=not self.exact)))
        elif name == "peer_shutdown":
            if self.peer_state == "open" and self.stream:
                self.peer_state = "eof"
                self.trace.append((op, outcome(self.peer.shutdown, socket.SHUT_WR)[0]))
        elif name in ("peer_close", "peer_reset"):
            if self.peer_state != "closed":
                if name == "peer_reset" and self.family == "tcp":
                    linger0(self.peer)
                    self.reset = True
                self.peer_state = "closed"
                self.peer.close()
                self.trace.append((op, "ok"))
        elif name == "close_ours":
            if not self.ours_closed:
                self.ours_closed = True
                self.ours.close()
                self.trace.append((op, "ok"))
        elif name == "blocking":
            self.trace.append((op, await self.blocking(op[1])))
        elif name == "blocking_recv":
            # without debug, a blocking socket with data waiting is read at once
            if self.ours_closed or not ready(self.ours, select.POLLIN) or \
                    self.live.get("r") and not self.live["r"].task.done():
                self.trace.append((op, "skip"))
            else:
                self.ours.setblocking(True)
                try:
                    r = await self.call(self.loop.sock_recv(self.ours, op[1]))
                finally:
                    self.ours.setblocking(False)
                if r[0] == "ok":
                    self.take(r[1])
                    r = ("ok", digest(r[1]))
                else:
                    r = self.exc(r[1])
                self.trace.append((op, r))
        elif name == "connect":
            self.trace.append((op, await self.connect(op[1])))
        elif name == "accept":
            if not self.stream or self.ours_closed:
                self.trace.append((op, "skip"))
                return
            o = Op(len(self.started), op, "a")
            o.task = self.loop.create_task(self.loop.sock_accept(self.listener))

            def accepted(t, o=o):
                if t.cancelled():
                    self.trace.append(("done", o.n, "cancelled"))
                elif t.exception() is not None:
                    self.trace.append(("done", o.n, self.exc(t.exception())))
                else:
                    conn, addr = t.result()
                    self.trace.append(("done", o.n, "accepted", self.name(addr), conn.gettimeout()))
                    conn.close()
            o.task.add_done_callback(accepted)
            self.started.append(o)
            self.trace.append(("start", o.n, op))
            await spin(3)
            if not o.task.done():
                self.live["a"] = o
        elif name == "spin":
            await spin(op[1])
        elif name == "user_cb":
            self.trace.append((op, self.user_callback(op[1])))
        elif name in ("remove_reader", "remove_writer"):
            # also removes what a waiting operation registered: it then waits forever
            self.trace.append((op, outcome(getattr(self.loop, name), self.ours)))
            self.live.pop("r" if name == "remove_reader" else "w", None)
        elif name == "mutate":
            self.trace.append((op, self.mutate()))
        else:
            raise AssertionError(op)
        await self.settle()

    def user_callback(self, direction):
        """add_reader/add_writer on our socket: a callback that records its
        call and removes itself; it takes the registration over."""
        if self.ours_closed:
            return "skip"
        o = Op(len(self.started), ("user_cb", direction), direction)
        o.task = self.loop.create_future()
        remove = self.loop.remove_reader if direction == "r" else self.loop.remove_writer

        def callback(tag):
            self.trace.append(("user callback", o.n, tag, outcome(remove, self.ours)))
            if not o.task.done():
                o.task.set_result(None)
        self.started.append(o)
        add = self.loop.add_reader if direction == "r" else self.loop.add_writer
        r = outcome(add, self.ours, callback, o.n)
        if r[0] == "ok":
            self.live[direction] = o
        else:
            o.task.cancel()
        return o.n, r

    def mutate(self):
        """Change the bytearray of the waiting sock_sendall, try to resize it."""
        o = self.live.get("w")
        if o is None or o.task.done() or o.op[0] != "sendall" or o.op[2] != "bytearray" or not o.arg:
            return "skip"
        o.arg[-1:] = b"!"
        o.data = bytes(o.arg)
        return outcome(o.arg.extend, b"?")

    async def blocking(self, name):
        """In debug mode a blocking socket is refused (ValueError)."""
        if self.ours_closed:
            return "skip"
        self.loop.set_debug(True)
        self.ours.setblocking(True)
        try:
            coro = {
                "recv": lambda: self.loop.sock_recv(self.ours, 1),
                "recv_into": lambda: self.loop.sock_recv_into(self.ours, bytearray(1)),
                "sendall": lambda: self.loop.sock_sendall(self.ours, b"x"),
                "connect": lambda: self.loop.sock_connect(self.ours, self.names_rev("listener" if self.stream else "peer")),
                "accept": lambda: self.loop.sock_accept(self.ours),
                "recvfrom": lambda: self.loop.sock_recvfrom(self.ours, 1),
                "sendto": lambda: self.loop.sock_sendto(self.ours, b"x", self.names_rev("listener" if self.stream else "peer")),
            }[name]()
            r = self.result(await self.call(coro))
        finally:
            self.ours.setblocking(False)
            self.loop.set_debug(False)
        return r

    async def connect(self, target):
        """sock_connect of a new socket (closed at once)."""
        if self.ours_closed and self.live:
            return "skip"  # a new socket could take the closed one's number
        unix = self.family in ("unix", "unixdgram")
        s = socket.socket(socket.AF_UNIX if unix else socket.AF_INET,
                          socket.SOCK_STREAM if self.stream else socket.SOCK_DGRAM)
        s.setblocking(False)
        addr = {
            "listener": self.names_rev("listener") if self.stream else self.names_rev("peer"),
            "refusing": self.names_rev("refusing") if self.stream else self.gone,
            "missing": os.path.join(self.tmp, "missing") if unix else ("127.0.0.1", 70000),
            "badport": os.path.join(self.tmp, "x" * 200) if unix else ("127.0.0.1", "no-such-service"),
            "localhost": os.path.join(self.tmp, "missing") if unix else ("localhost", self.names_rev("refusing")[1] if self.stream else 9),
            "none": None,
        }[target]
        try:
            r = self.result(await self.call(self.loop.sock_connect(s, addr)))
        finally:
            s.close()
        if target == "listener" and self.stream and r[0] == "ok":
            # a waiting sock_accept takes it, or it waits in the backlog
            await spin()
        return r

    async def finish(self):
        await self.settle()
        # the peer reads until the waiting send of ours (if any) is done
        if self.peer_state != "closed":
            self.trace.append(("final peer read", await self.peer_read(until_done=True)))
            await self.settle()
        self.trace.append(("pending at end", [o.n for o in self.pending()]))
        for o in self.pending():
            o.task.cancel()
        await spin()
        # what is left for us, read directly
        if not self.ours_closed:
            while True:
                try:
                    data = self.ours.recv(1 << 20)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    self.trace.append(("our final read", type(e).__name__))
                    self.reset = self.reset or isinstance(e, ConnectionResetError)
                    break
                if self.stream and not data:
                    break
                self.take(data)
        if self.reset:
            self.trace.append(("ours received", "reset"))
        elif self.stream:
            self.trace.append(("ours received", len(self.got), len(self.peer_sent), self.got == self.peer_sent))
        else:
            # (a read into an empty buffer may or may not take a datagram)
            self.trace.append(("ours received", [digest(g) for g in self.got], len(self.peer_sent),
                               all(s.startswith(g) for g, s in zip(self.got, self.peer_sent))))
        # what the peer got from us
        if not self.ours_closed:
            self.ours.close()
            self.ours_closed = True
        if self.peer_state != "closed":
            await self.peer_read()
            if self.stream:
                got = digest(self.peer_got) if self.exact or not self.partial_send else "partial"
            else:
                got = [digest(d) for d in self.peer_got]
            self.trace.append(("peer received", got))

    async def __call__(self):
        await self.open()
        try:
            await self.run_ops()
            await self.finish()
        finally:
            for o in self.started:
                o.task.cancel()
            await spin()
            for s in [self.ours, self.peer, self.refusing] + self.closeme + \
                    ([self.listener] if self.stream else []):
                s.close()


# ---------------------------------------------------------------- strategies

NBYTES = st.sampled_from([0, 1, 5, 100, 4096, 65536, -1, True])
BUFSIZES = st.sampled_from([0, 1, 5, 100, 4096, 65536])
SEND_SIZES = st.one_of(st.sampled_from([0, 1, 7, 100, 4096]), st.sampled_from([65536, 300_000, 1 << 20]))
SEND_KINDS = st.sampled_from(["bytes", "bytearray", "memoryview", "bytes", "str"])


def sock_ops(family):
    stream = family in ("tcp", "unix")
    reads = [st.tuples(st.just("recv"), NBYTES),
             st.tuples(st.just("recv_into"), BUFSIZES, st.sampled_from(["bytearray", "memoryview", "bytes", "array"]))]
    writes = [st.tuples(st.just("sendall"), SEND_SIZES if stream else st.sampled_from([0, 1, 100, 4096]), SEND_KINDS)]
    if PY311:
        reads += [st.tuples(st.just("recvfrom"), NBYTES),
                  st.tuples(st.just("recvfrom_into"), BUFSIZES, st.sampled_from([None, 0, 1, 3, 1 << 20]))]
        writes += [st.tuples(st.just("sendto"), st.sampled_from([0, 1, 100, 4096]),
                             st.sampled_from(["peer", "peer", "gone", "bad", "none"]))]
    if stream:
        writes += [st.tuples(st.just("sendfile"), st.sampled_from([0, 10, 5000, 300_000]),
                             st.sampled_from([0, 3]), st.sampled_from([None, 0, 1, 4000]), st.booleans())]
    read = st.one_of(*reads)
    other = st.one_of(
        st.tuples(st.just("cancel"), st.integers(0, 3)),
        st.tuples(st.just("send_cancel"), st.sampled_from([1, 100, 5000]), st.integers(0, 3)),
        st.tuples(st.just("timeout"), read),
        st.tuples(st.just("peer_send"), st.sampled_from([1, 10, 1000, 16000] if stream else [0, 1, 10, 1000])),
        st.sampled_from([("peer_read",), ("peer_read",), ("peer_shutdown",), ("peer_close",),
                         ("peer_reset",), ("close_ours",), ("spin", 3)]),
        st.tuples(st.just("blocking"), st.sampled_from(["recv", "recv_into", "sendall", "connect", "accept"]
                                                      + (["recvfrom", "sendto"] if PY311 else []))),
        st.tuples(st.just("blocking_recv"), st.sampled_from([1, 100])),
        st.tuples(st.just("connect"), st.sampled_from(["listener", "refusing", "missing", "badport",
                                                       "localhost", "none"])),
        st.just(("accept",)),
        st.tuples(st.just("user_cb"), st.sampled_from(["r", "w"])),
        st.sampled_from([("remove_reader",), ("remove_writer",), ("mutate",)]),
    )
    return st.lists(st.one_of(read, read, st.one_of(*writes), other, other), max_size=12)


@st.composite
def sock_programs(draw):
    family = draw(st.sampled_from(["tcp", "unix", "udp", "unixdgram"]))
    return dict(family=family, ops=draw(sock_ops(family)))


@settings(max_examples=examples(200), **SETTINGS)
@given(program=sock_programs())
def test_sock_programs(impl, program):
    """sock_* operations on stream and datagram sockets under random
    programs: same outcomes, same order, no data lost or duplicated."""
    async def scenario(loop, trace):
        loop.set_exception_handler(lambda loop, ctx: trace.append(
            ("handler", _norm_message(ctx["message"]),
             type(ctx["exception"]).__name__ if ctx.get("exception") else None)))
        with record_log(trace), tempfile.TemporaryDirectory() as tmp:
            await SockRun(loop, trace, program, tmp)()
    check_same(scenario)


# ============================================================ fd callbacks

class FileNo:
    """An object with a fileno() method."""

    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd

    def __repr__(self):
        return "<FileNo>"


class BadFileNo:
    def fileno(self):
        raise OSError("no fileno")

    def __repr__(self):
        return "<BadFileNo>"


class FdRun:
    """Interprets a program of fd-callback calls on a few socket pairs."""

    LABELS = ("A", "B", "C")

    def __init__(self, loop, trace, program, tmp):
        self.loop, self.trace, self.tmp = loop, trace, tmp
        self.ops = program["ops"]
        self.script = program["script"]
        self.events = []       # what happened during the current step
        self.ours, self.peers = {}, {}
        self.closed = set()    # labels whose socket of ours is closed
        self.calls = {}        # (label, direction) -> calls so far of its callback
        self.registered = {}   # (label, direction) -> registered by this program
        self.stale = False     # an fd was closed while registered: its number must not come back
        self.both_closed = set()  # labels closed with a reader and a writer registered

    def new_pair(self, label):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        self.ours[label], self.peers[label] = a, b

    async def open(self):
        for label in self.LABELS:
            self.new_pair(label)
        self.tsock, self.tpeer = socket.socketpair()
        self.tpeer.setblocking(False)
        self.transport, _ = await self.loop.connect_accepted_socket(asyncio.Protocol, self.tsock)
        self.tfd = self.tsock.fileno()
        self.file = open(os.path.join(self.tmp, "file"), "wb")

    def fdnames(self):
        names = {self.ours[x].fileno(): x for x in self.LABELS if x not in self.closed}
        names[self.tfd] = "T"
        return names

    def clean(self, text):
        text = re.sub(r"<[^>]*>", "<...>", str(text))
        names = self.fdnames()
        return re.sub(r"\b\d+\b", lambda m: names.get(int(m.group()), m.group()), text)

    def target(self, label, form):
        """What is passed as the fd."""
        if label == "T":
            return {"int": self.tfd, "sock": self.tsock, "obj": FileNo(self.tfd)}[form]
        if label == "bad":
            return {"-1": -1, "str": "nope", "float": 1.5, "huge": 2 ** 40, "huger": 2 ** 70,
                    "noobj": BadFileNo(), "closed": 100_000, "file": self.file.fileno(),
                    "none": None}[form]
        s = self.ours[label]
        return {"int": s.fileno(), "sock": s, "obj": FileNo(s.fileno())}[form]

    def callback(self, label, direction, cb):
        """A callback whose actions (the program's script for `cb`) touch only
        its own fd."""
        key = (label, direction)
        sock = self.ours[label]

        def callback(*args):
            n = self.calls.get(key, 0) + 1
            self.calls[key] = n
            self.events.append(("cb", cb, label, direction, args))
            for action in self.script.get(cb, ()):
                if action == "raise":
                    raise ZeroDivisionError(f"cb{cb}")
                if action == "remove_self":
                    r = outcome(self.loop.remove_reader if direction == "r" else self.loop.remove_writer, sock)
                    self.events.append(("removed self", cb, label, direction, r))
                elif action == "remove_other":
                    r = outcome(self.loop.remove_writer if direction == "r" else self.loop.remove_reader, sock)
                    self.events.append(("removed other", cb, label, direction, r))
                elif action == "consume":
                    total = 0
                    while True:
                        r = outcome(sock.recv, 1 << 16)
                        if r[0] != "ok" or not r[1]:
                            break
                        total += len(r[1])
                    self.events.append(("consumed", cb, label, total, r[0]))
                elif action == "readd":
                    if n < 3:
                        add = self.loop.add_reader if direction == "r" else self.loop.add_writer
                        r = outcome(add, sock, callback, *args)
                        self.events.append(("readded", cb, label, direction, self.clean(r)))
                elif action == "stop_after_2":
                    if n >= 2:
                        r = outcome(self.loop.remove_reader if direction == "r" else self.loop.remove_writer, sock)
                        self.events.append(("stopped", cb, label, direction, r))
        return callback

    async def step(self, op):
        name = op[0]
        if name in ("add_reader", "add_writer", "remove_reader", "remove_writer"):
            label, form = op[1], op[2]
            if label in self.closed:
                # the closed socket object (fileno -1), or its old number
                if label in self.both_closed and name.startswith("remove"):
                    self.trace.append((op, "skip"))
                    return
                if self.stale and name.startswith("add"):
                    # test_known_differences[add_reader_closed_registered_number]
                    self.trace.append((op, "skip"))
                    return
                if form == "sock":
                    target = self.ours[label]
                else:
                    target = self.old_fd[label] if form == "int" else FileNo(self.old_fd[label])
            else:
                target = self.target(label, form)
            direction = "r" if "reader" in name else "w"
            method = getattr(self.loop, name)
            if name.startswith("add"):
                cb, args = op[3], op[4]
                func = self.callback(label, direction, cb) if label in self.LABELS else (lambda *a: None)
                r = outcome(method, target, func, *args)
            else:
                r = outcome(method, target)
            self.trace.append((op, r[0], self.clean(r[1])))
        elif name == "peer_send":
            label = op[1]
            r = outcome(self.peers[label].send, b"x" * op[2])
            self.trace.append((op, r[0]))
        elif name == "peer_drain":
            label = op[1]
            total = 0
            while (r := outcome(self.peers[label].recv, 1 << 20))[0] == "ok" and r[1]:
                total += len(r[1])
            self.trace.append((op, total))
        elif name == "fill":
            # our socket stops being writable
            s = self.ours[op[1]]
            if op[1] not in self.closed:
                while outcome(s.send, b"f" * 65536)[0] == "ok":
                    pass
            self.trace.append((op, "ok"))
        elif name == "close":
            label = op[1]
            if label not in self.closed:
                s = self.ours[label]
                fd = s.fileno()
                registered = self.loop_has(fd)
                if any(registered):
                    self.stale = True
                if all(registered):
                    # test_known_differences[remove_after_close_with_both]
                    self.both_closed.add(label)
                self.old_fd = getattr(self, "old_fd", {})
                self.old_fd[label] = fd
                s.close()
                self.closed.add(label)
                self.trace.append((op, "ok"))
        elif name == "reopen":
            label = op[1]
            if label in self.closed and not self.stale:
                self.peers[label].close()
                self.new_pair(label)
                self.closed.discard(label)
                self.trace.append((op, "ok"))
        elif name == "close_transport":
            self.transport.close()
            self.trace.append((op, "ok"))
        elif name == "spin":
            pass
        else:
            raise AssertionError(op)
        await spin(op[1] if name == "spin" else 3)
        self.flush()

    def loop_has(self, fd):
        """(reader, writer): whether each is registered for the fd."""
        if isinstance(self.loop, asyncio.SelectorEventLoop):
            key = self.loop._selector.get_map().get(fd)
            return (False, False) if key is None else (key.data[0] is not None, key.data[1] is not None)
        r, w = self.loop._fd_handles(fd)
        return r is not None, w is not None

    def flush(self):
        if self.events:
            self.trace.append(("events", sorted(self.events, key=repr)))
            self.events = []

    async def __call__(self):
        await self.open()
        try:
            for op in self.ops:
                await self.step(op)
            for label in self.LABELS:
                if label not in self.closed:
                    for m in (self.loop.remove_reader, self.loop.remove_writer):
                        self.trace.append(("final", m.__name__, label, outcome(m, self.ours[label])))
            await spin()
            self.flush()
        finally:
            self.transport.abort()
            await spin()
            for s in list(self.ours.values()) + list(self.peers.values()) + [self.tpeer, self.file]:
                s.close()


FD_LABELS = st.sampled_from(["A", "A", "B", "C"])
FORMS = st.sampled_from(["int", "sock", "obj"])
BAD = st.tuples(st.just("bad"), st.sampled_from(["-1", "str", "float", "huge", "huger", "noobj",
                                                 "closed", "file", "none"]))
TARGETS = st.one_of(st.tuples(FD_LABELS, FORMS), st.tuples(FD_LABELS, FORMS),
                    st.tuples(st.just("T"), FORMS), BAD)
ARGS = st.sampled_from([(), ("x",), (1, None)])
ACTIONS = st.lists(st.sampled_from(["raise", "remove_self", "remove_other", "consume", "readd",
                                    "stop_after_2"]), max_size=2)

FD_OPS = st.one_of(
    st.builds(lambda n, t, cb, a: (n,) + t + (cb, a), st.sampled_from(["add_reader", "add_writer"]),
              TARGETS, st.integers(0, 3), ARGS),
    st.builds(lambda n, t: (n,) + t, st.sampled_from(["remove_reader", "remove_writer"]), TARGETS),
    st.tuples(st.just("peer_send"), FD_LABELS, st.sampled_from([1, 1000])),
    st.tuples(st.sampled_from(["peer_drain", "fill", "close", "reopen"]), FD_LABELS),
    st.sampled_from([("close_transport",), ("spin", 1), ("spin", 4)]),
)


@st.composite
def fd_programs(draw):
    return dict(script=draw(st.dictionaries(st.integers(0, 3), ACTIONS, max_size=4)),
                ops=draw(st.lists(FD_OPS, max_size=14)))


@settings(max_examples=examples(200), **SETTINGS)
@given(program=fd_programs())
def test_fd_callback_programs(impl, program):
    """add_reader/add_writer/remove_* under random programs: same return
    values and errors, same callbacks (as many times), same handler calls."""
    async def scenario(loop, trace):
        run = None

        def handler(loop, ctx):
            exc = ctx.get("exception")
            (run.events if run else trace).append(
                ("handler", _norm_message(ctx["message"]), type(exc).__name__ if exc else None, str(exc)))
        loop.set_exception_handler(handler)
        with tempfile.TemporaryDirectory() as tmp:
            run = FdRun(loop, trace, program, tmp)
            with record_log(run.events):
                await run()
    check_same(scenario)


# ========================================================= found differences

def test_recv_huge_nbytes(impl):
    """sock_recv(sock, 2**44): the standard loop raises MemoryError (the
    socket module cannot allocate the buffer); the process must survive.
    (In a child: where this is broken the interpreter aborts.)"""
    code = """
        import asyncio, socket, sys
        IMPL_IMPORT
        for factory in (asyncio.SelectorEventLoop, impl.new_event_loop):
            loop = factory()
            a, b = socket.socketpair()
            a.setblocking(False)
            b.send(b"hello")
            for n in (1 << 44, 1 << 62):
                try:
                    r = loop.run_until_complete(loop.sock_recv(a, n))
                    print("ok", r)
                except BaseException as e:
                    print(type(e).__name__)
            a.close(); b.close(); loop.close()
    """
    r = run_python(code)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.split()
    assert lines[:2] == lines[2:], lines


async def recv_zero_waits(loop, trace):
    """sock_recv(sock, 0) / sock_recv_into(sock, bytearray()) with nothing to
    read return at once, as sock.recv(0) does."""
    for family in ("tcp", "unix"):
        if family == "tcp":
            with socket.create_server(("127.0.0.1", 0)) as listener:
                a = socket.create_connection(listener.getsockname())
                b, _ = listener.accept()
        else:
            a, b = socket.socketpair()
        a.setblocking(False)
        for coro in (lambda: loop.sock_recv(a, 0), lambda: loop.sock_recv_into(a, bytearray())):
            try:
                trace.append((family, "ok", await asyncio.wait_for(coro(), 0.2)))
            except asyncio.TimeoutError:
                trace.append((family, "still waiting"))
        a.close()
        b.close()


async def huge_fd_overflow(loop, trace):
    """Numbers beyond C int: add_* raise select's OverflowError, remove_* of
    one that cannot have been registered return False."""
    for fd in (2 ** 31, 2 ** 40, 2 ** 70):
        trace.append((fd, outcome(loop.add_reader, fd, print), outcome(loop.add_writer, fd, print),
                      outcome(loop.remove_reader, fd), outcome(loop.remove_writer, fd)))


async def oserror_from_io_error(loop, trace):
    """add_reader of a closed fd number: OSError(9, 'Bad file descriptor')
    with its errno, as epoll.register raises it."""
    for fd in (100_000,):
        try:
            loop.add_reader(fd, print)
        except OSError as e:
            trace.append((type(e).__name__, str(e), e.errno, e.strerror))
    with open(os.devnull, "rb") as f:     # epoll refuses regular files and devices? (EPERM)
        with tempfile.TemporaryFile() as g:
            try:
                loop.add_writer(g.fileno(), print)
            except OSError as e:
                trace.append((type(e).__name__, str(e), e.errno, e.strerror))


async def sendall_bytearray_mutated(loop, trace):
    """sock_sendall(bytearray) sends from the caller's buffer, as sock.sendall
    does: a change to the unsent part goes out, and the buffer cannot be
    resized while the send waits (BufferError)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    data = bytearray(b"a" * 3_000_000)   # more than the socket takes at once
    task = loop.create_task(loop.sock_sendall(a, data))
    await asyncio.sleep(0.01)
    trace.append(("waiting", not task.done()))
    data[-3:] = b"XYZ"
    trace.append(outcome(data.extend, b"!"))
    got = bytearray()
    while len(got) < 3_000_000:
        got += await loop.sock_recv(b, 1 << 20)
    await task
    trace.append(bytes(got[-3:]))
    a.close()
    b.close()


async def remove_other_dir_after_close(loop, trace):
    """add_reader, the socket is closed, remove_writer (nothing to remove):
    the reader is still registered (remove_reader returns True)."""
    a, b = socket.socketpair()
    fd = a.fileno()
    loop.add_reader(a, lambda: None)
    a.close()
    trace.append(outcome(loop.remove_writer, fd))
    trace.append(outcome(loop.remove_reader, fd))
    b.close()


async def fileobj_replaced(loop, trace):
    """The object an fd is registered under is the first one passed (until
    the fd is unregistered): after close() removal by the socket object finds
    the registration only if it was registered by that object first."""
    for first, second in (("int", "sock"), ("sock", "int")):
        a, b = socket.socketpair()
        pick = {"int": a.fileno(), "sock": a}
        loop.add_reader(pick[first], lambda: None)
        loop.add_reader(pick[second], lambda: None)
        a.close()
        trace.append((first, second, outcome(loop.remove_reader, a)))
        b.close()


def _reused_number(second):
    async def scenario(loop, trace):
        a, b = socket.socketpair()
        fd = a.fileno()
        loop.add_reader(a, lambda: None)
        a.close()                      # closed while registered
        b.close()
        c, d = socket.socketpair()     # takes the same number
        trace.append(("same number", c.fileno() == fd))
        if second == "reader":
            trace.append(outcome(loop.add_reader, c, lambda: trace.append("reader called")))
        else:
            trace.append(outcome(loop.add_writer, c, lambda: trace.append("writer called")))
        d.send(b"x")
        await spin(3)
        trace.append((outcome(loop.remove_reader, c), outcome(loop.remove_writer, c)))
        c.close()
        d.close()
    return scenario


async def remove_after_close_with_both(loop, trace):
    a, b = socket.socketpair()
    fd = a.fileno()
    loop.add_reader(fd, lambda: None)
    loop.add_writer(fd, lambda: None)
    a.close()                          # closed while registered
    trace.append(outcome(loop.remove_reader, fd))
    trace.append(outcome(loop.remove_writer, fd))
    b.close()


async def add_reader_closed_registered_number(loop, trace):
    for by_object in (False, True):
        a, b = socket.socketpair()
        fd = a.fileno()
        loop.add_reader(a if by_object else fd, lambda: None)
        a.close()                          # closed while registered
        trace.append(outcome(loop.add_reader, a if by_object else fd, lambda: None))
        trace.append(outcome(loop.remove_reader, a if by_object else fd))
        b.close()


async def sock_ops_on_transport_socket(loop, trace):
    """sock_* on a socket a transport owns: what goes at once goes, what has
    to wait raises RuntimeError (asyncio's _ensure_fd_no_transport)."""
    a, b = socket.socketpair()
    b.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
    transport.pause_reading()
    clean = lambda r: (r[0], re.sub(r"<[^>]*>", "<...>", re.sub(r"\d+", "N", str(r[1]))))
    for coro in (lambda: loop.sock_recv(a, 10), lambda: loop.sock_recv_into(a, bytearray(10)),
                 lambda: loop.sock_sendall(a, b"x"), lambda: loop.sock_sendall(a, b"y" * 3_000_000)):
        try:
            trace.append(("ok", await asyncio.wait_for(coro(), 0.2)))
        except (Exception, asyncio.TimeoutError) as e:
            trace.append(clean((type(e).__name__, e)))
    b.send(b"data")
    await spin()
    try:
        trace.append(("ok", await loop.sock_recv(a, 10)))
    except Exception as e:
        trace.append(clean((type(e).__name__, e)))
    transport.close()                   # closing: no longer guarded
    try:
        trace.append(("ok", await asyncio.wait_for(loop.sock_recv(a, 10), 0.1)))
    except (Exception, asyncio.TimeoutError) as e:
        trace.append(clean((type(e).__name__, e)))
    await spin()
    b.close()


async def recv_cancelled_keeps_data(loop, trace):
    """A sock_recv cancelled after its data arrived but before its callback
    ran does not consume the data; cancelled after the callback ran, the
    data is gone with the task (both asyncio's behaviour)."""
    for spins in range(4):
        a, b = socket.socketpair()
        a.setblocking(False)
        task = loop.create_task(loop.sock_recv(a, 100))
        await spin(2)
        b.send(b"hello")
        await spin(spins)
        trace.append((spins, task.cancel()))
        await spin(2)
        trace.append((spins, "cancelled" if task.cancelled() else task.result(), outcome(a.recv, 100)))
        a.close()
        b.close()


@pytest.mark.parametrize("scenario", [
    case("sock_ops_on_transport_socket", sock_ops_on_transport_socket),
    case("recv_cancelled_keeps_data", recv_cancelled_keeps_data),
])
def test_edge_cases(impl, scenario):
    check_same(scenario)


@pytest.mark.parametrize("scenario", [
    # ferroloop differences the programs found, fixed since: run as plain
    # differential scenarios.
    recv_zero_waits, huge_fd_overflow, oserror_from_io_error, sendall_bytearray_mutated,
    remove_other_dir_after_close, fileobj_replaced,
], ids=lambda scenario: scenario.__name__)
def test_found_bugs(impl, scenario):
    check_same(scenario)


@pytest.mark.parametrize("scenario", [
    # Where asyncio fails on its own stale state, ferroloop keeps the sound
    # behaviour; the programs do not go there (FdRun.stale).
    known("reused_number_add_reader", _reused_number("reader"),
           "a socket closed while registered, a new one with its number: asyncio's selector "
           "keeps the old key and changes nothing in epoll, the new reader is never called; "
           "ferroloop registers the new socket"),
    known("reused_number_add_writer", _reused_number("writer"),
           "the same with add_writer: asyncio's epoll.modify fails (FileNotFoundError) and it "
           "forgets the fd; ferroloop registers the new socket"),
    known("remove_after_close_with_both", remove_after_close_with_both,
           "remove_reader of a closed fd that also has a writer: asyncio's epoll.modify fails, "
           "OSError EBADF escapes and its selector forgets the fd; ferroloop returns True"),
    known("add_reader_closed_registered_number", add_reader_closed_registered_number,
           "add_reader of a closed number (or closed socket object) still in asyncio's selector "
           "map succeeds silently (nothing is polled); ferroloop raises OSError EBADF (ValueError "
           "'Invalid file descriptor: -1') as for any closed fd"),
])
def test_known_differences(impl, scenario):
    check_same(scenario)
