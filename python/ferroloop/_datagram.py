"""The datagram transport: asyncio's own, with one change to its read.

asyncio receives each datagram with `sock.recvfrom(256 KiB)`, which
allocates (and, that size being past malloc's mmap threshold, maps and
unmaps) a 256 KiB buffer per datagram before trimming it. Here datagrams
are received into one buffer the loop reuses, and only the bytes that
arrived are copied out: same data, same truncation, same errors, a
fraction of the cost per datagram."""

from asyncio import selector_events


class DatagramTransport(selector_events._SelectorDatagramTransport):

    def _read_ready(self):
        if self._conn_lost:
            return
        buffer = self._loop._receive_buffer(self.max_size)
        try:
            nbytes, addr = self._sock.recvfrom_into(buffer)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._protocol.error_received(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, 'Fatal read error on datagram transport')
        else:
            self._protocol.datagram_received(buffer[:nbytes].tobytes(), addr)


def make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
    return DatagramTransport(self, sock, protocol, address, waiter, extra)
