"""Byte-for-byte splicing of a client socket onto a TLS socket: the pipe mode's hot path.

``--mode pipe`` copies bytes and nothing else, so it needs none of tornado's
buffering: every ``IOStream`` read cost a Future, a coroutine step and a buffer
copy, about half of the CPU per query in pipe mode (profiled with py-spy under
dnsperf). :class:`Splice` is driven straight by the event loop's readiness
callbacks instead: a readable socket is read, and what was read is written to the
other socket at once.

Back-pressure without buffers: while one socket has not taken all the bytes it was
given, the socket they came from is not read, so a splice never holds more than one
read per direction, however slowly its client or upstream reads.

TLS needs care in three places, handled here: OpenSSL reads one record per call, so
the TLS side is read until it would block; a TLS write that would block must be
retried with the same bytes; and a TLS read may need to write first (a key update
answered while the socket is full), so it is retried once the socket is writable.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Callable

# What one readiness callback reads from a socket at most: one TLS record per
# recv, up to four records per callback (the loop calls again while more is there).
RECORD = 16384 + 256
MAX_BATCH = 4 * RECORD
_RESET = struct.pack("ii", 1, 0)  # struct linger: on, 0 s


async def tls_handshake(tls_socket: ssl.SSLSocket) -> None:
    """Complete the handshake of a non-blocking TLS socket on the running loop.

    Raises what ``do_handshake`` raises (``ssl.SSLError``, ``OSError``); the caller
    bounds the time it may take.
    """
    loop = asyncio.get_running_loop()
    fd = tls_socket.fileno()
    while True:
        try:
            tls_socket.do_handshake()
            return
        except ssl.SSLWantReadError:
            add, remove = loop.add_reader, loop.remove_reader
        except ssl.SSLWantWriteError:
            add, remove = loop.add_writer, loop.remove_writer
        ready: asyncio.Future[None] = loop.create_future()
        add(fd, _resolve, ready)
        try:
            await ready
        finally:
            remove(fd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Splice:
    """Copies bytes both ways between ``client`` (plain) and ``upstream`` (TLS).

    :meth:`run` returns once either side ends (end of stream, an error, or
    :meth:`close`); both sockets are then closed. ``activity`` counts the reads, for
    an idle check that costs the hot path nothing but an addition. ``on_upstream_data``
    is called once, after the first bytes from the upstream (by then TLS 1.3 has
    delivered its session tickets, which the caller may keep for resumption).
    """

    def __init__(
        self,
        client: socket.socket,
        upstream: ssl.SSLSocket,
        on_upstream_data: Callable[[], None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = client
        self._upstream = upstream
        self._client_fd = client.fileno()
        self._upstream_fd = upstream.fileno()
        self._on_upstream_data = on_upstream_data
        # Bytes a socket did not take yet; while set, the other socket is not read.
        self._to_upstream = b""
        self._to_client = b""
        self._upstream_read_wants_write = False
        self._upstream_writer = False
        self._client_writer = False
        # The upstream has ended: the splice ends once the client has taken the rest.
        self._ending = False
        self.activity = 0
        self.error: BaseException | None = None
        self._done: asyncio.Future[None] = self._loop.create_future()

    async def run(self) -> None:
        """Splice until either side ends; both sockets are closed on return."""
        loop = self._loop
        try:
            loop.add_reader(self._client_fd, self._client_readable)
            loop.add_reader(self._upstream_fd, self._upstream_readable)
            await self._done
        finally:
            self.close()

    def close(self) -> None:
        """Stop splicing and close both sockets (idempotent)."""
        if self._client_fd < 0:
            return
        loop = self._loop
        loop.remove_reader(self._client_fd)
        loop.remove_writer(self._client_fd)
        loop.remove_reader(self._upstream_fd)
        loop.remove_writer(self._upstream_fd)
        self._client_fd = self._upstream_fd = -1
        if self._to_client:
            # The client stopped reading: a FIN would wait behind bytes it never takes,
            # so the connection is reset instead (SO_LINGER 0), as it would be anyway.
            with contextlib.suppress(OSError):
                self._client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        self._client.close()
        self._upstream.close()
        if not self._done.done():
            self._done.set_result(None)

    def _end(self, error: BaseException | None = None) -> None:
        if self.error is None:
            self.error = error
        self.close()

    # -- client -> upstream ------------------------------------------------------------

    def _client_readable(self) -> None:
        try:
            data = self._client.recv(MAX_BATCH)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(exc)
            return
        if not data:
            # Never seen while bytes wait for the upstream: the client is not read then.
            self._end()
            return
        self.activity += 1
        self._send_upstream(data)

    def _send_upstream(self, data: bytes) -> None:
        """Write to the TLS side; what it does not take waits, and the client is not read."""
        try:
            sent = self._upstream.send(data)
        except (ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
            sent = 0  # retried with the same bytes once writable, as OpenSSL requires
        except OSError as exc:  # ssl.SSLError included (a TLS 1.2 renegotiation, say)
            self._end(exc)
            return
        if sent == len(data):
            if self._to_upstream:
                self._to_upstream = b""
                self._loop.add_reader(self._client_fd, self._client_readable)
        else:
            if not self._to_upstream:
                self._loop.remove_reader(self._client_fd)
            self._to_upstream = data[sent:]
        self._update_upstream_writer()

    def _upstream_writable(self) -> None:
        if self._upstream_read_wants_write:
            self._upstream_read_wants_write = False
            self._upstream_readable()
            if self._client_fd < 0:
                return
        if self._to_upstream:
            self._send_upstream(self._to_upstream)
        else:
            self._update_upstream_writer()

    def _update_upstream_writer(self) -> None:
        if self._client_fd < 0:
            return
        wanted = bool(self._to_upstream) or self._upstream_read_wants_write
        if wanted != self._upstream_writer:
            self._upstream_writer = wanted
            if wanted:
                self._loop.add_writer(self._upstream_fd, self._upstream_writable)
            else:
                self._loop.remove_writer(self._upstream_fd)

    # -- upstream -> client ------------------------------------------------------------

    def _upstream_readable(self) -> None:
        if self._to_client:
            return  # paused: the client has not taken the last read yet
        upstream = self._upstream
        chunks: list[bytes] = []
        size = 0
        ended = False
        error: BaseException | None = None
        while size < MAX_BATCH:
            try:
                chunk = upstream.recv(RECORD)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLWantWriteError:
                self._upstream_read_wants_write = True
                self._update_upstream_writer()
                break
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                ended, error = True, exc
                break
            if not chunk:
                ended = True
                break
            chunks.append(chunk)
            size += len(chunk)
        else:
            if upstream.pending():
                # Decrypted bytes OpenSSL holds would never wake the loop: come back.
                self._loop.call_soon(self._upstream_readable)
        if ended:
            self._ending = True
            self.error = error
        if chunks:
            self.activity += 1
            if self._on_upstream_data is not None:
                self._on_upstream_data()
                self._on_upstream_data = None
            self._send_client(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        elif ended:
            self._end(error)

    def _send_client(self, data: bytes) -> None:
        if self._client_fd < 0:
            return
        try:
            sent = self._client.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._end(exc)
            return
        if sent == len(data):
            if self._ending:
                self._end(self.error)  # the upstream has ended, and all it sent is out
                return
            if self._to_client:
                self._to_client = b""
                self._loop.add_reader(self._upstream_fd, self._upstream_readable)
                # OpenSSL may hold a record it read before the pause.
                self._loop.call_soon(self._upstream_readable)
        else:
            if not self._to_client:
                self._loop.remove_reader(self._upstream_fd)
            self._to_client = data[sent:]
        wanted = bool(self._to_client)
        if wanted != self._client_writer:
            self._client_writer = wanted
            if wanted:
                self._loop.add_writer(self._client_fd, self._client_writable)
            else:
                self._loop.remove_writer(self._client_fd)

    def _client_writable(self) -> None:
        if self._to_client:
            self._send_client(self._to_client)
