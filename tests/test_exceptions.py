"""Exception handler: callback errors, default handler logging, API checks."""

import asyncio
import gc
import logging

import pytest

from conftest import shown_args, capture_log, exc_outcome


def _raiser(msg="boom"):
    raise ValueError(msg)


def _ctx_summary(ctx):
    return {
        "keys": sorted(ctx),
        "message": ctx.get("message"),
        "exception": (type(ctx["exception"]).__name__, str(ctx["exception"]))
        if "exception" in ctx else None,
        "handle": type(ctx["handle"]).__name__ if "handle" in ctx else None,
    }


@pytest.mark.uvloop_differs("uvloop context/message differ")
def test_callback_exception_goes_to_handler(same):
    def scenario(loop, trace):
        loop.set_exception_handler(
            lambda lp, ctx: trace.append(
                ("handler", lp is loop, _ctx_summary(ctx))))
        loop.call_soon(_raiser, "soon")
        loop.call_soon(trace.append, "next-callback-still-runs")
        loop.call_later(0.001, _raiser, "timer")
        loop.call_later(0.02, loop.stop)
        loop.run_forever()

    t = same(scenario)
    assert t[0][2]["message"].startswith("Exception in callback _raiser(")
    assert t[0][2]["keys"] == ["exception", "handle", "message"]
    assert t[1] == "next-callback-still-runs"
    assert t[2][2]["handle"] == "TimerHandle"


def test_callback_exception_handler_receives_exception_object(loop):
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))
    loop.call_soon(_raiser, "x")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(seen) == 1
    assert isinstance(seen[0]["exception"], ValueError)
    assert seen[0]["exception"].__traceback__ is not None
    assert seen[0]["message"].startswith("Exception in callback")


@pytest.mark.uvloop_differs("uvloop log message differs")
def test_default_handler_logs_error(same):
    def scenario(loop, trace):
        with capture_log() as cap:
            loop.call_soon(_raiser, "logged")
            loop.call_soon(loop.stop)
            loop.run_forever()
        trace.extend(cap.summary(logging.WARNING))

    t = same(scenario)
    assert len(t) == 1
    level, msg, exc = t[0]
    assert level == "ERROR"
    args = shown_args("('logged')")
    assert msg.startswith("Exception in callback _raiser" + args + " at ")
    assert "\nhandle: <Handle _raiser" + args + " at " in msg
    assert exc == "ValueError"


def test_default_handler_logger_name(loop):
    with capture_log() as cap:
        loop.call_soon(_raiser)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert [r.name for r in cap.records] == ["asyncio"]
    assert cap.records[0].levelno == logging.ERROR


def test_call_exception_handler_default_formats_context(same):
    def scenario(loop, trace):
        with capture_log() as cap:
            loop.call_exception_handler(
                {"message": "custom problem", "extra": [1, 2], "n": 3})
            try:
                raise KeyError("kk")
            except KeyError as e:
                loop.call_exception_handler(
                    {"message": "with exc", "exception": e})
            loop.call_exception_handler({"message": "only message"})
        trace.extend(cap.summary())

    assert same(scenario) == [
        ("ERROR", "custom problem\nextra: [1, 2]\nn: 3", None),
        ("ERROR", "with exc", "KeyError"),
        ("ERROR", "only message", None)]


def test_call_exception_handler_custom(same):
    def scenario(loop, trace):
        loop.set_exception_handler(
            lambda lp, ctx: trace.append(sorted(ctx.items())))
        loop.call_exception_handler({"message": "m", "x": 1})

    assert same(scenario) == [[("message", "m"), ("x", 1)]]


def test_handler_that_raises_is_logged(same):
    def bad_handler(loop, ctx):
        raise RuntimeError("handler failed")

    def scenario(loop, trace):
        loop.set_exception_handler(bad_handler)
        with capture_log() as cap:
            loop.call_soon(_raiser)
            loop.call_soon(trace.append, "still-running")
            loop.call_soon(loop.stop)
            loop.run_forever()
            loop.call_exception_handler({"message": "direct"})
        trace.extend((lvl, msg.splitlines()[0], exc)
                     for lvl, msg, exc in cap.summary())

    t = same(scenario)
    assert t[0] == "still-running"
    assert t[1] == ("ERROR", "Unhandled error in exception handler",
                    "RuntimeError")


def test_set_exception_handler_type_check(same):
    def scenario(loop, trace):
        trace.append(exc_outcome(loop.set_exception_handler, 42))
        trace.append(exc_outcome(loop.set_exception_handler, "nope"))
        trace.append(loop.get_exception_handler())

        def h(lp, ctx):
            pass
        loop.set_exception_handler(h)
        trace.append(loop.get_exception_handler() is h)
        loop.set_exception_handler(None)
        trace.append(loop.get_exception_handler())

    assert same(scenario) == [
        ("TypeError", "A callable object or None is expected, got 42"),
        ("TypeError", "A callable object or None is expected, got 'nope'"),
        None, True, None]


@pytest.mark.uvloop_differs("uvloop re-raises at the end of the iteration")
@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_propagate_out_of_run_forever(same, exc):
    def scenario(loop, trace):
        def raise_it():
            raise exc("out")
        loop.set_exception_handler(lambda lp, ctx: trace.append("handler"))
        loop.call_soon(raise_it)
        loop.call_soon(trace.append, "after")
        try:
            loop.run_forever()
        except BaseException as e:
            trace.append(("raised", type(e).__name__))
        trace.append(("running", loop.is_running()))
        loop.call_soon(loop.stop)
        loop.run_forever()   # the loop is still usable

    assert same(scenario) == [("raised", exc.__name__), ("running", False),
                              "after"]


@pytest.mark.parametrize("kind", ["stream", "datagram"])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_from_a_transports_read(same, kind, exc):
    """`data_received`/`datagram_received` raising KeyboardInterrupt or
    SystemExit: it propagates out of the transport's fd callback and out of
    run_forever; the loop and the transport go on reading afterwards."""
    import socket

    def scenario(loop, trace):
        class Proto(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                trace.append(("received", data))
                if data == b"raise":
                    raise exc("out")
                if data == b"stop":
                    loop.stop()

            datagram_received = lambda self, data, addr: self.data_received(data)

        loop.set_exception_handler(lambda lp, ctx: trace.append(("handler", ctx["message"])))
        a, b = socket.socketpair(type=socket.SOCK_STREAM if kind == "stream" else socket.SOCK_DGRAM)
        if kind == "stream":
            make = loop.create_unix_connection(Proto, sock=a)
        else:
            make = loop.create_datagram_endpoint(Proto, sock=a)
        transport, proto = loop.run_until_complete(make)
        b.send(b"raise")
        try:
            loop.run_forever()
        except BaseException as e:
            trace.append(("raised", type(e).__name__))
        b.send(b"stop")
        loop.run_forever()
        trace.append(("closing", transport.is_closing()))
        transport.close()
        b.close()
        loop.run_until_complete(asyncio.sleep(0))

    assert same(scenario) == [("received", b"raise"), ("raised", exc.__name__),
                              ("received", b"stop"), ("closing", False)]


@pytest.mark.parametrize("kind", ["stream", "datagram"])
@pytest.mark.parametrize("exc", [ValueError, KeyboardInterrupt])
def test_exception_from_connection_made_and_lost(same, kind, exc):
    """`connection_made` and `connection_lost` raising: an Exception goes to
    the exception handler (the message names the callback; the transport
    classes' names differ), KeyboardInterrupt out of run_until_complete;
    reading starts and the socket is closed anyway."""
    import re
    import socket

    def scenario(loop, trace):
        class Proto(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
                raise exc("made")

            def data_received(self, data):
                trace.append(("received", data))

            datagram_received = lambda self, data, addr: self.data_received(data)

            def connection_lost(self, e):
                trace.append(("lost", e))
                raise exc("lost")

        def handler(lp, ctx):
            message = re.sub(r"\w+\._call_connection_lost", "_call_connection_lost", ctx["message"])
            message = re.sub(r"\(<.*>\)$", "(<transport>)", message)
            trace.append(("handler", message, repr(ctx.get("exception"))))

        loop.set_exception_handler(handler)
        a, b = socket.socketpair(type=socket.SOCK_STREAM if kind == "stream" else socket.SOCK_DGRAM)
        if kind == "stream":
            make = loop.create_unix_connection(Proto, sock=a)
        else:
            make = loop.create_datagram_endpoint(Proto, sock=a)
        made = loop.create_task(make)
        for _ in range(2):
            try:
                transport, proto = loop.run_until_complete(made)
                break
            except BaseException as e:
                trace.append(("raised", type(e).__name__))
        b.send(b"data")
        loop.run_until_complete(asyncio.sleep(0.05))
        transport.close()
        for _ in range(2):
            try:
                loop.run_until_complete(asyncio.sleep(0.01))
                break
            except BaseException as e:
                trace.append(("raised", type(e).__name__))
        trace.append(("socket closed", a.fileno() == -1))
        b.close()

    same(scenario)


def test_base_exception_from_run_until_complete(same):
    def scenario(loop, trace):
        async def main():
            raise KeyboardInterrupt
        try:
            loop.run_until_complete(main())
        except KeyboardInterrupt:
            trace.append("KeyboardInterrupt")
        trace.append(loop.run_until_complete(asyncio.sleep(0, "again")))

    assert same(scenario) == ["KeyboardInterrupt", "again"]


def test_task_exception_never_retrieved(same):
    def scenario(loop, trace):
        async def fails():
            raise ValueError("lost")

        with capture_log() as cap:
            async def main():
                t = loop.create_task(fails())
                await asyncio.sleep(0.01)
                del t
            loop.run_until_complete(main())
            gc.collect()
        trace.extend((lvl, msg.splitlines()[0], exc)
                     for lvl, msg, exc in cap.summary())

    t = same(scenario)
    assert t == [("ERROR", "Task exception was never retrieved",
                  "ValueError")]


def test_exception_in_handler_context_from_task(same):
    def scenario(loop, trace):
        loop.set_exception_handler(
            lambda lp, ctx: trace.append(_ctx_summary(ctx)["keys"]))

        async def main():
            fut = loop.create_future()
            fut.set_exception(RuntimeError("x"))
            del fut
            gc.collect()
        loop.run_until_complete(main())

    assert same(scenario) == [["exception", "future", "message"]]
