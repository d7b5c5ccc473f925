"""Stand-in for the ``ferroloop`` module built from the standard library.

Used only when FERROLOOP_TEST_STANDIN=asyncio: it lets the suite run with the
standard loop in the role of ferroloop, which checks that the tests
themselves are right (every differential test must pass trivially).
"""
import asyncio

Loop = asyncio.SelectorEventLoop


def new_event_loop():
    return asyncio.SelectorEventLoop()


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    def _loop_factory(self):
        return new_event_loop()


def install():
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, debug=None):
    return asyncio.run(main, debug=debug)
