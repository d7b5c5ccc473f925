"""Handles that ran are recycled by ferroloop when nothing else references
them: nothing observable may change. The same scenarios on the standard
loop give the reference trace: handles kept by user code, cancelled in
their own callback, referenced from their own arguments, contexts (and
their release once a handle ran), finalizers that schedule, loop switches,
debug mode toggled, exceptions, and all of it on another thread."""

import asyncio
import contextvars
import gc
import threading
import weakref

var = contextvars.ContextVar("var", default="unset")


def scenario(new_loop):
    """The trace of handle behaviour that recycling must not change."""
    out = []
    loop = new_loop()
    # 1. a handle the user keeps is not reused
    ctx = contextvars.copy_context()
    kept = loop.call_soon(lambda: out.append("kept ran"), context=ctx)
    loop.call_soon(loop.stop); loop.run_forever()
    for i in range(50):
        loop.call_soon(lambda i=i: None)
    loop.call_soon(loop.stop); loop.run_forever()
    # (asyncio keeps _callback after a run; ferroloop drops it by design)
    out.append(("kept", kept._context is ctx, kept.cancelled()))
    # 2. cancelled in its own callback, then dropped
    box = {}
    def self_cancel():
        box["h"].cancel(); del box["h"]
    box["h"] = loop.call_soon(self_cancel)
    loop.call_soon(loop.stop); loop.run_forever()
    hs = [loop.call_soon(lambda: None) for _ in range(5)]
    out.append(("fresh not cancelled", [h.cancelled() for h in hs]))
    loop.call_soon(loop.stop); loop.run_forever()
    # 3. handle referenced only from its args: reused afterwards, works
    lst = []
    lst.append(loop.call_soon(lambda l: out.append(("args", len(l))), lst))
    del lst
    loop.call_soon(loop.stop); loop.run_forever()
    seen = []
    for i in range(5):
        c = contextvars.copy_context()
        c.run(var.set, f"v{i}")
        loop.call_soon(lambda i=i: seen.append((i, var.get())), context=c)
    loop.call_soon(loop.stop); loop.run_forever()
    out.append(("contexts", seen))
    # 4. context changes in a callback do not leak to the next one
    def setter(): var.set("leak")
    def getter(): out.append(("getter sees", var.get()))
    loop.call_soon(setter); loop.call_soon(getter)
    loop.call_soon(loop.stop); loop.run_forever()
    # 5. the context is released after the handle ran (not kept by a spare)
    class Big: pass
    big = Big(); ref = weakref.ref(big)
    c = contextvars.copy_context(); c.run(var.set, big); del big
    loop.call_soon(lambda: None, context=c); del c
    loop.call_soon(loop.stop); loop.run_forever()
    gc.collect()
    out.append(("context released", ref() is None))
    # 6. a finalizer that schedules while a handle is being recycled
    class Fin:
        def __del__(self):
            loop.call_soon(lambda: out.append("from finalizer"))
    c = contextvars.copy_context(); c.run(var.set, Fin())
    loop.call_soon(lambda: None, context=c); del c
    loop.call_soon(loop.stop); loop.run_forever()
    loop.call_soon(loop.stop); loop.run_forever()
    # 7. a handle with a live weak reference is not reused: the reference
    # dies (its callback runs) when the handle goes, not later
    weak_box = {}
    h = loop.call_soon(lambda: None)
    weak_box["ref"] = weakref.ref(h, lambda r: out.append("weakref callback"))
    del h
    loop.call_soon(loop.stop); loop.run_forever()
    out.append(("weakref dead after run", weak_box["ref"]() is None))
    fresh = [loop.call_soon(lambda: None) for _ in range(3)]
    out.append(("weakref still dead", weak_box["ref"]() is None, weak_box["ref"]() in fresh))
    loop.call_soon(loop.stop); loop.run_forever()
    del fresh
    # 8. _loop and get_context of handles after a loop switch
    loop.close()
    loop2 = new_loop()
    h = loop2.call_soon(lambda: None)
    out.append(("loop2", h._loop is loop2))
    loop2.call_soon(loop2.stop); loop2.run_forever()
    # 9. debug toggled while handles are queued
    loop2.set_debug(True)
    hd = loop2.call_soon(lambda: None); del hd
    loop2.set_debug(False)
    loop2.call_soon(loop2.stop); loop2.run_forever()
    h = loop2.call_soon(lambda: None)
    out.append(("tb after debug", h._source_traceback is None))
    loop2.call_soon(loop2.stop); loop2.run_forever()
    # 10. an exception in a callback, then reuse
    loop2.set_exception_handler(lambda l, c: out.append(("handler", str(c["exception"]))))
    loop2.call_soon(lambda: 1/0)
    loop2.call_soon(loop2.stop); loop2.run_forever()
    loop2.close()
    return out


def _in_thread(factory):
    result = []
    t = threading.Thread(target=lambda: result.append(scenario(factory)))
    t.start()
    t.join()
    return result[0]


def test_recycled_handles_are_indistinguishable(factories):
    expected = scenario(factories["asyncio"])
    assert scenario(factories["ferroloop"]) == expected
    assert _in_thread(factories["ferroloop"]) == expected


def test_threads_ending_with_spare_handles(factories):
    for _ in range(10):
        _in_thread(factories["ferroloop"])
    gc.collect()
    assert scenario(factories["ferroloop"]) == scenario(factories["asyncio"])
