"""The stream (TCP and Unix) socket transport: asyncio's own, with one
change to its read, as for datagrams (_datagram.py): data is received into
one buffer the loop reuses and only what arrived is copied out, instead of
allocating a 256 KiB bytes object per read and shrinking it."""

from asyncio import selector_events


class SocketTransport(selector_events._SelectorSocketTransport):

    def _read_ready__data_received(self):
        if self._conn_lost:
            return
        buffer = self._loop._receive_buffer(self.max_size)
        try:
            nbytes = self._sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, 'Fatal read error on socket transport')
            return

        if not nbytes:
            self._read_ready__on_eof()
            return

        try:
            self._protocol.data_received(buffer[:nbytes].tobytes())
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(
                exc, 'Fatal error: protocol.data_received() call failed.')


def make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
    return SocketTransport(self, sock, protocol, waiter, extra, server)
