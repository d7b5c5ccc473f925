"""add_reader / add_writer / remove_reader / remove_writer."""

import asyncio
import os
import socket

import pytest

from conftest import exc_outcome, outcome


class FileLike:
    def __init__(self, fd):
        self._fd = fd

    def fileno(self):
        return self._fd


def _run_until(loop, pred, timeout=5.0):
    async def wait():
        deadline = loop.time() + timeout
        while not pred():
            if loop.time() > deadline:
                raise TimeoutError("condition not met")
            await asyncio.sleep(0.001)
    loop.run_until_complete(wait())


@pytest.mark.uvloop_differs("uvloop remove_reader/remove_writer return None")
@pytest.mark.parametrize("kind", ["socketpair", "pipe"])
@pytest.mark.parametrize("wrap", ["int", "fileobj"])
def test_reader_called_when_readable(loop, kind, wrap):
    if kind == "socketpair":
        a, b = socket.socketpair()
        rfd, write = a.fileno(), b.send
        closers = [a.close, b.close]
    else:
        r, w = os.pipe()
        rfd, write = r, lambda data: os.write(w, data)
        closers = [lambda: os.close(r), lambda: os.close(w)]
    try:
        got = []

        def on_read(tag):
            got.append((tag, os.read(rfd, 100)))

        target = rfd if wrap == "int" else FileLike(rfd)
        assert loop.add_reader(target, on_read, "tag") is None
        loop.call_later(0.01, write, b"hello")
        _run_until(loop, lambda: got)
        assert got == [("tag", b"hello")]
        assert loop.remove_reader(target) is True
        assert loop.remove_reader(target) is False
        write(b"more")
        loop.run_until_complete(asyncio.sleep(0.02))
        assert got == [("tag", b"hello")]
    finally:
        for c in closers:
            c()


@pytest.mark.uvloop_differs("uvloop remove_reader/remove_writer return None")
@pytest.mark.parametrize("kind", ["socketpair", "pipe"])
def test_writer_called_when_writable(loop, kind):
    if kind == "socketpair":
        a, b = socket.socketpair()
        wfd = a.fileno()
        closers = [a.close, b.close]
    else:
        r, w = os.pipe()
        wfd = w
        closers = [lambda: os.close(r), lambda: os.close(w)]
    try:
        calls = []
        loop.add_writer(wfd, calls.append, "w")
        _run_until(loop, lambda: len(calls) >= 3)   # level-triggered
        assert loop.remove_writer(wfd) is True
        assert loop.remove_writer(wfd) is False
        n = len(calls)
        loop.run_until_complete(asyncio.sleep(0.02))
        assert len(calls) == n
    finally:
        for c in closers:
            c()


def test_reader_is_level_triggered(loop):
    a, b = socket.socketpair()
    try:
        calls = []

        def on_read():
            calls.append(1)
            if len(calls) == 3:
                a.recv(100)   # drain: no more calls afterwards

        loop.add_reader(a, on_read)
        b.send(b"x")
        _run_until(loop, lambda: len(calls) >= 3)
        loop.run_until_complete(asyncio.sleep(0.02))
        assert len(calls) == 3
        loop.remove_reader(a)
    finally:
        a.close()
        b.close()


@pytest.mark.uvloop_differs("uvloop remove_reader/remove_writer return None")
def test_reader_and_writer_same_fd(loop):
    a, b = socket.socketpair()
    try:
        r, w = [], []
        loop.add_reader(a, lambda: r.append(a.recv(10)))
        loop.add_writer(a, lambda: w.append(1))
        b.send(b"x")
        _run_until(loop, lambda: r and w)
        assert loop.remove_writer(a) is True
        b.send(b"y")
        _run_until(loop, lambda: len(r) >= 2)
        assert b"".join(r) == b"xy"
        assert loop.remove_reader(a) is True
        assert loop.remove_writer(a) is False
    finally:
        a.close()
        b.close()


@pytest.mark.uvloop_differs("uvloop remove_reader/remove_writer return None")
def test_add_reader_replaces_previous_callback(loop):
    a, b = socket.socketpair()
    try:
        got = []
        loop.add_reader(a, lambda: got.append(("first", a.recv(10))))
        loop.add_reader(a, lambda: got.append(("second", a.recv(10))))
        b.send(b"z")
        _run_until(loop, lambda: got)
        assert got == [("second", b"z")]
        assert loop.remove_reader(a) is True
    finally:
        a.close()
        b.close()


@pytest.mark.uvloop_differs("uvloop remove_reader/remove_writer return None")
def test_remove_from_inside_callback(loop):
    a, b = socket.socketpair()
    try:
        got = []

        def cb():
            got.append(loop.remove_reader(a))
        loop.add_reader(a, cb)
        b.send(b"x")
        _run_until(loop, lambda: got)
        loop.run_until_complete(asyncio.sleep(0.02))
        assert got == [True]
    finally:
        a.close()
        b.close()


def test_eof_makes_reader_fire(loop):
    a, b = socket.socketpair()
    try:
        got = []
        loop.add_reader(a, lambda: got.append(a.recv(10)))
        loop.call_soon(b.close)
        _run_until(loop, lambda: got)
        assert got[0] == b""
        loop.remove_reader(a)
    finally:
        a.close()


@pytest.mark.uvloop_differs("uvloop makes fds non-blocking")
@pytest.mark.parametrize("blocking", [True, False])
def test_fd_blocking_mode_unchanged(loop, blocking):
    r, w = os.pipe()
    try:
        os.set_blocking(r, blocking)
        os.set_blocking(w, blocking)
        loop.add_reader(r, lambda: None)
        loop.add_writer(w, lambda: None)
        loop.run_until_complete(asyncio.sleep(0.01))
        assert os.get_blocking(r) is blocking
        assert os.get_blocking(w) is blocking
        loop.remove_reader(r)
        loop.remove_writer(w)
        assert os.get_blocking(r) is blocking
        assert os.get_blocking(w) is blocking
    finally:
        os.close(r)
        os.close(w)


class NoFileno:
    pass


class BadFileno:
    def fileno(self):
        return "nope"


@pytest.mark.uvloop_differs("uvloop error types/messages differ")
@pytest.mark.parametrize("method", ["add_reader", "add_writer",
                                    "remove_reader", "remove_writer"])
@pytest.mark.parametrize("bad", ["str", "none", "nofileno", "badfileno",
                                 "negative", "float"])
def test_bad_fd_argument_errors(same, method, bad):
    arg = {"str": "x", "none": None, "nofileno": NoFileno(),
           "badfileno": BadFileno(), "negative": -1, "float": 1.5}[bad]

    def scenario(loop, trace):
        args = (arg, print) if method.startswith("add") else (arg,)
        r = exc_outcome(getattr(loop, method), *args)
        # object reprs contain addresses
        if len(r) == 2:
            r = (r[0], r[1].split(" object at ")[0])
        trace.append(r)

    same(scenario)


@pytest.mark.uvloop_differs("uvloop error types differ")
def test_add_reader_closed_fd_errors(same):
    def scenario(loop, trace):
        r, w = os.pipe()
        os.close(r)
        os.close(w)
        res = outcome(loop.add_reader, r, print)
        trace.append(res[0])
        loop.remove_reader(r)

    assert same(scenario) in (["OSError"], ["ok"])


def test_reader_callback_exception_goes_to_handler(same):
    def scenario(loop, trace):
        a, b = socket.socketpair()
        try:
            def cb():
                a.recv(10)
                raise ValueError("in reader")
            loop.set_exception_handler(
                lambda lp, ctx: (trace.append(
                    (ctx["message"].split(" ")[:3],
                     type(ctx["exception"]).__name__)), lp.stop()))
            loop.add_reader(a, cb)
            b.send(b"x")
            loop.call_later(5, loop.stop)
            loop.run_forever()
            loop.remove_reader(a)
        finally:
            a.close()
            b.close()

    assert same(scenario) == [(["Exception", "in", "callback"],
                               "ValueError")]


@pytest.mark.uvloop_differs("uvloop has no loop._selector")
def test_selector_unregister(same):
    # Twisted's asyncio reactor calls loop._selector.unregister(fd) after
    # a failed add_reader; its key is returned and the fd no longer watched.
    def scenario(loop, trace):
        a, b = socket.socketpair()
        try:
            loop.add_reader(a, trace.append, "reader")
            loop.add_writer(a.fileno(), trace.append, "writer")
            key = loop._selector.unregister(a)
            trace.append((key.fileobj is a, key.fd == a.fileno(), key.events))
            trace.append(exc_outcome(loop._selector.get_key, a.fileno())[0])
            trace.append(exc_outcome(loop._selector.unregister, a)[0])
            b.send(b"x")
            loop.call_later(0.02, loop.stop)
            loop.run_forever()
            trace.append((loop.remove_reader(a), loop.remove_writer(a)))
        finally:
            a.close()
            b.close()

    assert same(scenario) == [(True, True, 3), "KeyError", "KeyError", (False, False)]


@pytest.mark.uvloop_differs("uvloop dispatches I/O before ready callbacks")
def test_io_callbacks_ordered_after_ready_callbacks(same):
    def scenario(loop, trace):
        a, b = socket.socketpair()
        try:
            b.send(b"x")
            loop.call_soon(trace.append, "soon-1")
            loop.add_reader(a, lambda: (trace.append("reader"),
                                        a.recv(10), loop.remove_reader(a)))
            loop.call_soon(trace.append, "soon-2")
            loop.call_later(0.02, loop.stop)
            loop.run_forever()
        finally:
            a.close()
            b.close()

    assert same(scenario) == ["soon-1", "soon-2", "reader"]


@pytest.mark.uvloop_differs("uvloop allows add_reader on a closed loop")
def test_io_on_closed_loop(same):
    def scenario(loop, trace):
        a, b = socket.socketpair()
        try:
            loop.close()
            trace.append(exc_outcome(loop.add_reader, a, print))
            trace.append(exc_outcome(loop.add_writer, a, print))
            trace.append(exc_outcome(loop.remove_reader, a))
            trace.append(exc_outcome(loop.remove_writer, a))
        finally:
            a.close()
            b.close()

    assert same(scenario)[:2] == [("RuntimeError", "Event loop is closed")] * 2


def test_close_with_registered_readers_is_clean(loop):
    a, b = socket.socketpair()
    r, w = os.pipe()
    try:
        loop.add_reader(a, print)
        loop.add_writer(b, print)
        loop.add_reader(r, print)
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        # fds still usable by their owners after the loop went away
        b.send(b"ok")
        assert a.recv(10) == b"ok"
        os.write(w, b"p")
        assert os.read(r, 1) == b"p"
    finally:
        a.close()
        b.close()
        os.close(r)
        os.close(w)


@pytest.mark.uvloop_differs("uvloop remove_reader/remove_writer return None")
def test_many_fds(loop):
    pairs = [socket.socketpair() for _ in range(100)]
    try:
        got = set()
        for i, (a, b) in enumerate(pairs):
            loop.add_reader(a, lambda i=i, a=a: (got.add(i), a.recv(10)))
        for a, b in pairs:
            b.send(b"!")
        _run_until(loop, lambda: len(got) == len(pairs))
        for a, b in pairs:
            assert loop.remove_reader(a) is True
    finally:
        for a, b in pairs:
            a.close()
            b.close()
