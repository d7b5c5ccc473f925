"""Nothing scheduled on the loop outlives its use.

ferroloop takes its handles off the cycle collector (see src/handles.rs): a
handle never holds its loop and drops its callback once it has run, been
cancelled, or its loop closed. These tests hold objects whose callbacks form
a cycle through their own handle, the pattern `self.timer = loop.call_later(
..., self.on_timeout)`, and check that they are freed exactly when they
are on the standard loop."""

import gc
import weakref


class Owner:
    """Keeps its own handle: owner -> handle -> bound method -> owner."""

    def __init__(self):
        self.handle = None
        self.ran = False

    def callback(self):
        self.ran = True


def collected(ref):
    gc.collect()
    return ref() is None


def test_ran_handle_cycle_is_freed(loop):
    owner = Owner()
    owner.handle = loop.call_soon(owner.callback)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert owner.ran
    ref = weakref.ref(owner)
    del owner
    assert collected(ref)


def test_cancelled_timer_cycle_is_freed(loop):
    owner = Owner()
    owner.handle = loop.call_later(3600, owner.callback)
    owner.handle.cancel()
    ref = weakref.ref(owner)
    del owner
    assert collected(ref)


def test_pending_timer_keeps_its_callback_until_close(loop):
    owner = Owner()
    owner.handle = loop.call_later(3600, owner.callback)
    ref = weakref.ref(owner)
    del owner
    assert not collected(ref), "a pending timer must keep its callback alive"
    loop.close()
    assert collected(ref)


def test_reader_cycle_is_freed_after_remove(loop):
    import socket
    a, b = socket.socketpair()
    with a, b:
        owner = Owner()
        loop.add_reader(a, owner.callback)
        owner.handle = a
        ref = weakref.ref(owner)
        del owner
        assert not collected(ref), "a registered reader keeps its callback alive"
        assert loop.remove_reader(a)
        assert collected(ref)


def test_closed_loop_with_pending_callbacks_is_collected(factory):
    lp = factory()
    lp.call_soon(print)
    lp.call_later(3600, print)
    ref = weakref.ref(lp)
    lp.close()
    del lp
    assert collected(ref)


def test_close_releases_every_fd(factory):
    import os
    before = set(os.listdir("/proc/self/fd"))
    lp = factory()
    lp.call_soon(print)
    lp.close()
    # Not waiting for the loop object to be collected: close() itself
    # releases the poller, its wake-up fds and the self-pipe.
    assert set(os.listdir("/proc/self/fd")) <= before
    del lp


def test_loop_that_made_futures_is_collected(factory):
    """A loop keeps what its futures are initialised with (`{'loop': loop}`,
    a reference cycle): it is still freed once closed and dropped, with a
    future of its own still alive or not, as on the standard loop."""
    lp = factory()
    kept = lp.create_future()
    lp.run_until_complete(_done(lp))
    ref = weakref.ref(lp)
    lp.close()
    del lp
    assert not collected(ref)  # (the future holds its loop)
    del kept
    assert collected(ref)


async def _done(lp):
    fut = lp.create_future()
    lp.call_soon(fut.set_result, 1)
    return await fut


class _KeepsTransport:
    """A protocol that keeps its transport, and tells when its connection
    is lost."""

    def __init__(self, lost=None):
        self.transport = None
        self.lost = lost

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        pass

    def eof_received(self):
        pass

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_closed_connection_with_a_new_protocol_is_collected(factory):
    """A connection lost, its transport given a new protocol that keeps it
    (a cycle through the transport's reference to its protocol): the
    collector frees both, as on the standard loop. The first protocol,
    which the transport no longer refers to, is freed by its count."""
    import socket
    lp = factory()
    try:
        async def lose_connection():
            a, b = socket.socketpair()
            lost = lp.create_future()
            transport, first = await lp.connect_accepted_socket(lambda: _KeepsTransport(lost), a)
            b.close()
            await lost
            second = _KeepsTransport()
            second.transport = transport
            transport.set_protocol(second)
            return weakref.ref(first), weakref.ref(second), weakref.ref(transport)
        first, second, transport = lp.run_until_complete(lose_connection())
        assert first() is None
        assert second() is not None and transport() is not None  # (a cycle)
        assert collected(second) and collected(transport)
    finally:
        lp.close()
