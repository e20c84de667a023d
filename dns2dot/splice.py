"""Byte-for-byte splicing of a client socket onto a TLS connection: pipe mode's hot path.

``--mode pipe`` copies bytes and nothing else, so it needs none of tornado's
buffering: every ``IOStream`` read cost a Future, a coroutine step and a buffer
copy, about half of the CPU per query in pipe mode (profiled with py-spy under
dnsperf). :class:`Splice` is driven straight by the event loop's readiness
callbacks instead: a readable socket is read, and what was read is written to the
other socket at once. Measured on one rig (unbound DoT upstream, dnsperf -m tcp -c 10):
tornado relays 32-40k q/s, this splice over an ``SSLSocket`` 48k, over a
:class:`TlsChannel` (memory BIOs: one ``recv`` for all the records the socket holds)
57-63k, where socat did 25-28k.

Back-pressure without buffers: while one socket has not taken all the bytes it was
given, the socket they came from is not read, so a splice never holds more than one
read per direction, however slowly its client or upstream reads.

:func:`tls_handshake` is the non-blocking handshake of an ``SSLSocket`` (the pooled
connections hand it to tornado afterwards); :meth:`TlsChannel.handshake` the same
for the memory-BIO connection a splice uses. Both verify as the context says.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Callable

# What one readiness callback reads from a socket at most (the loop calls again while
# more is there): four full TLS records' worth.
RECORD = 16384 + 256
MAX_BATCH = 4 * RECORD
_RESET = struct.pack("ii", 1, 0)  # struct linger for SO_LINGER: on, 0 s (close resets)
# After the client's end of stream, how long the upstream may stay quiet before the
# splice ends: socat's ``-t`` default. Answers to the last queries are still relayed.
HALF_CLOSE_LINGER = 0.5
_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 0)  # Linux only; 0 where there is none


def reset_on_close(sock: socket.socket) -> None:
    """Make closing ``sock`` a reset (SO_LINGER 0): for a client that stopped reading,
    whose FIN would wait behind bytes it never takes."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)


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


class TlsChannel:
    """A TLS client connection over a plain non-blocking socket, through memory BIOs.

    Why not an ``SSLSocket``: OpenSSL reads a socket one record at a time, with one
    system call for the record's header, one for its body and one more to learn that
    nothing is left. Here one ``recv`` takes every record the socket holds and OpenSSL
    decrypts them from memory; what it encrypts is sent with one ``send``.
    """

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        server_hostname: str,
        session: ssl.SSLSession | None = None,
    ) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(
            self.incoming, self.outgoing, server_hostname=server_hostname, session=session
        )
        self.unsent = b""  # ciphertext the socket did not take yet
        self._quickack = False  # see acknowledge_at_once

    def acknowledge_at_once(self) -> None:
        """ACK every read at once (TCP_QUICKACK, Linux, TCP only), for a connection that
        carries many clients' queries.

        A DoT server that writes without TCP_NODELAY (unbound 1.17 does) holds an
        answer back (Nagle) while its previous segment is unacknowledged, and a delayed
        ACK waits up to 40 ms, or for the next query to carry it. On the pool's shared
        connection, at 30 q/s, every answer then came one query late (34 ms on average,
        seen with strace on both sides; 1 ms with this), and under load the stalls cost
        it a fifth of its throughput (30k -> 36k q/s with this). A pipe's connection
        carries one client's queries, which rarely come less than 40 ms apart, and there
        the extra ACKs cost a quarter of the throughput (51k -> 36k q/s), so a splice
        does without.
        """
        self._quickack = _QUICKACK != 0 and self.sock.family in (
            socket.AF_INET,
            socket.AF_INET6,
        )

    async def handshake(self) -> None:
        """Complete the handshake on the running loop (verification happens here).

        Raises what ``do_handshake`` raises, or ``ConnectionResetError`` if the peer
        closes first; the caller bounds the time it may take.
        """
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            pending = self.outgoing.read()
            if pending:
                await loop.sock_sendall(self.sock, pending)
            if done:
                return
            data = await loop.sock_recv(self.sock, RECORD)
            if not data:
                raise ConnectionResetError("the upstream closed during the TLS handshake")
            self.incoming.write(data)

    def receive(self) -> None:
        """Take what the socket holds (end of stream included) into OpenSSL.

        Raises what ``recv`` raises: ``BlockingIOError`` when there is nothing yet.
        """
        data = self.sock.recv(MAX_BATCH)
        if data:
            self.incoming.write(data)
            if self._quickack:
                # Linux leaves quick-ACK mode by itself: ask again after every read.
                self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        else:
            self.incoming.write_eof()

    def decrypt(self) -> tuple[bytes, bool, BaseException | None]:
        """The plaintext OpenSSL can decrypt now from what was received; whether the
        stream has ended (close_notify, end of stream, a broken record); and the
        error it ended with, if any."""
        tls = self.tls
        chunks: list[bytes] = []
        ended = False
        error: BaseException | None = None
        while True:
            try:
                chunk = tls.read(MAX_BATCH)
            except ssl.SSLWantReadError:
                ended = self.incoming.eof
                break
            except ssl.SSLZeroReturnError:  # close_notify
                ended = True
                break
            except ssl.SSLError as exc:  # a broken record, or truncation at end of stream
                ended, error = True, exc
                break
            if not chunk:
                ended = True
                break
            chunks.append(chunk)
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), ended, error

    def transmit(self) -> bool:
        """Send what OpenSSL encrypted; what the socket does not take is kept in
        ``unsent`` for the next call. Returns whether nothing is left unsent.

        Raises what ``send`` raises, but for a full socket.
        """
        data = self.unsent + self.outgoing.read()
        if not data:
            return True
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        self.unsent = data[sent:]
        return not self.unsent

    def close(self) -> None:
        self.sock.close()


class Splice:
    """Copies bytes both ways between ``client`` (plain) and ``upstream`` (TLS).

    :meth:`run` returns once either side ends (end of stream, an error, or
    :meth:`close`); both sockets are then closed. The client's end of stream may be a
    half-close (``shutdown(SHUT_WR)`` after its last query), so the splice then goes on
    relaying the upstream's bytes, as socat does, until the upstream has been quiet for
    ``linger`` seconds; the upstream is not told (a TLS close_notify could make it drop
    answers it still owes). ``activity`` counts the reads, for an idle check that costs
    the hot path nothing but an addition. ``on_upstream_data`` is called once, after
    the first bytes from the upstream (by then TLS 1.3 has delivered its session
    tickets, which the caller may keep for resumption).
    """

    def __init__(
        self,
        client: socket.socket,
        upstream: TlsChannel,
        on_upstream_data: Callable[[], None] | None = None,
        linger: float = HALF_CLOSE_LINGER,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = client
        self._upstream = upstream
        self._client_fd = client.fileno()
        self._upstream_fd = upstream.sock.fileno()
        self._on_upstream_data = on_upstream_data
        # Bytes the client did not take yet (the upstream's wait in its channel); while
        # they wait, the socket they came from is not read.
        self._to_client = b""
        # The upstream has ended: the splice ends once the client has taken the rest.
        self._ending = False
        # The client has ended its side: it is no longer read, and a timer ends the
        # splice once the upstream is quiet.
        self._client_ended = False
        self._linger = linger
        self._linger_timer: asyncio.TimerHandle | None = None
        self.activity = 0
        self.error: BaseException | None = None
        self._done: asyncio.Future[None] = self._loop.create_future()

    async def run(self) -> None:
        """Splice until either side ends; both sockets are closed on return."""
        loop = self._loop
        try:
            loop.add_reader(self._client_fd, self._client_readable)
            loop.add_reader(self._upstream_fd, self._upstream_readable)
            self._decrypt()  # records that came with the end of the handshake
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
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        if self._to_client:  # the client stopped reading
            reset_on_close(self._client)
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
            self._client_done()
            return
        self.activity += 1
        try:
            self._upstream.tls.write(data)  # into memory: never blocks
        except ssl.SSLError as exc:
            self._end(exc)
            return
        self._flush_upstream()

    def _client_done(self) -> None:
        """The client's end of stream: stop reading it, and end the splice once the
        upstream has been quiet for the linger time (at once without one)."""
        if self._linger <= 0:
            self._end()
            return
        self._client_ended = True
        self._loop.remove_reader(self._client_fd)
        self._arm_linger()

    def _arm_linger(self) -> None:
        self._linger_timer = self._loop.call_later(self._linger, self._linger_over, self.activity)

    def _linger_over(self, activity_then: int) -> None:
        self._linger_timer = None
        if self._client_fd < 0:
            return
        if self.activity != activity_then or self._to_client:
            # The upstream sent more, or the client has yet to take it: wait again (a
            # client that stops reading is left to the idle sweep, as at any time).
            self._arm_linger()
            return
        self._end()

    def _flush_upstream(self) -> None:
        """Send what OpenSSL encrypted; while the socket does not take it all, the
        client is not read."""
        waited = bool(self._upstream.unsent)
        try:
            done = self._upstream.transmit()
        except OSError as exc:
            self._end(exc)
            return
        loop = self._loop
        if done and waited:
            loop.remove_writer(self._upstream_fd)
            if not self._client_ended:
                loop.add_reader(self._client_fd, self._client_readable)
        elif not done and not waited:
            loop.remove_reader(self._client_fd)
            loop.add_writer(self._upstream_fd, self._flush_upstream)

    # -- upstream -> client ------------------------------------------------------------

    def _upstream_readable(self) -> None:
        try:
            self._upstream.receive()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(exc)
            return
        self._decrypt()

    def _decrypt(self) -> None:
        """Hand the client what OpenSSL can decrypt from what the upstream sent."""
        data, ended, error = self._upstream.decrypt()
        if self._upstream.outgoing.pending:  # OpenSSL has something to say (a key update)
            self._flush_upstream()
        if ended:
            self._ending = True
            if self.error is None:
                self.error = error
        if data:
            self.activity += 1
            if self._on_upstream_data is not None:
                self._on_upstream_data()
                self._on_upstream_data = None
            self._send_client(data)
        elif ended and not self._to_client:
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
        loop = self._loop
        if sent == len(data):
            if self._ending:
                self._end(self.error)  # the upstream has ended, and all it sent is out
                return
            if self._to_client:
                self._to_client = b""
                self.activity += 1  # progress, for the idle check and the linger
                loop.remove_writer(self._client_fd)
                loop.add_reader(self._upstream_fd, self._upstream_readable)
        else:
            if not self._to_client:
                loop.remove_reader(self._upstream_fd)
                loop.add_writer(self._client_fd, self._client_writable)
            self._to_client = data[sent:]

    def _client_writable(self) -> None:
        if self._to_client:
            self._send_client(self._to_client)
