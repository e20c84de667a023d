"""A connection's bytes on a non-blocking socket, driven by readiness callbacks.

:class:`TlsChannel` keeps OpenSSL away from the socket: one ``recv`` takes every
record the socket holds, OpenSSL decrypts from memory, and ciphertext goes out in
one ``send``. Every TLS connection dns2dot makes runs on it (the pooled DoT
connections, the pipe splice). :class:`PlainChannel` is plain TCP with the same
interface (:class:`Channel`), so a connection is written once for both (``plain://``
upstreams). :func:`tls_handshake` is the non-blocking handshake of a wrapped
``SSLSocket`` (the in-process TLS servers of the tests and ``bench.hotpath``).
See docs/ARCHITECTURE.md, "transport".
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Protocol

# What one readiness callback reads from a socket at most (the loop calls again while
# more is there): four full TLS records' worth.
RECORD = 16384 + 256
MAX_BATCH = 4 * RECORD
_QUICKACK: int = getattr(socket, "TCP_QUICKACK", 0)  # Linux only; 0 where there is none


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


class Channel(Protocol):
    """What a connection driven by readiness callbacks needs of its transport.

    ``receive`` when the socket is readable, then ``decrypt`` for the plaintext;
    ``write`` plaintext, then ``transmit`` (again when writable while ``unsent``).
    """

    sock: socket.socket
    unsent: bytes

    def acknowledge_at_once(self) -> None: ...

    def receive(self) -> None: ...

    def decrypt(self) -> tuple[bytes, bool, BaseException | None]: ...

    def write(self, data: bytes) -> None: ...

    @property
    def pending_output(self) -> bool: ...

    def transmit(self) -> bool: ...

    def close(self) -> None: ...


def _quickack_applies(sock: socket.socket) -> bool:
    return _QUICKACK != 0 and sock.family in (socket.AF_INET, socket.AF_INET6)


def decrypt_all(
    tls: ssl.SSLObject, incoming: ssl.MemoryBIO
) -> tuple[bytes, bool, BaseException | None]:
    """All the plaintext ``tls`` can decrypt now from ``incoming``; whether the stream
    has ended (close_notify, end of stream, a broken record); and the error it ended
    with, if any. Shared by the client channel and the server transport."""
    chunks: list[bytes] = []
    ended = False
    error: BaseException | None = None
    while True:
        try:
            chunk = tls.read(MAX_BATCH)
        except ssl.SSLWantReadError:
            ended = incoming.eof
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


class _SocketChannel:
    """What both channels do with the socket: ``incoming`` takes what is read (end of
    stream included), ``outgoing`` holds what is to be sent (OpenSSL's memory BIOs for
    TLS; :class:`_Buffer` for plain TCP)."""

    sock: socket.socket
    unsent: bytes
    incoming: ssl.MemoryBIO | _Buffer
    outgoing: ssl.MemoryBIO | _Buffer
    _quickack: bool

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
        self._quickack = _quickack_applies(self.sock)

    def receive(self) -> None:
        """Take what the socket holds (end of stream included) into ``incoming``.

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

    @property
    def pending_output(self) -> bool:
        """Whether there is something to send (after a write, or a TLS key update)."""
        return self.outgoing.pending != 0

    def transmit(self) -> bool:
        """Send what ``outgoing`` holds (for TLS, what OpenSSL encrypted); what the
        socket does not take is kept in ``unsent`` for the next call. Returns whether
        nothing is left unsent.

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


class TlsChannel(_SocketChannel):
    """A TLS client connection over a plain non-blocking socket, through memory BIOs.

    Why not an ``SSLSocket``: OpenSSL reads a socket one record at a time, with one
    system call for the record's header, one for its body and one more to learn that
    nothing is left. Here one ``recv`` takes every record the socket holds and OpenSSL
    decrypts them from memory; what it encrypts is sent with one ``send``.
    """

    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO

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

    def decrypt(self) -> tuple[bytes, bool, BaseException | None]:
        """The plaintext OpenSSL can decrypt now from what was received; whether the
        stream has ended (close_notify, end of stream, a broken record); and the
        error it ended with, if any."""
        return decrypt_all(self.tls, self.incoming)

    def write(self, data: bytes) -> None:
        """Encrypt ``data`` into memory (never blocks); :meth:`transmit` sends it.

        Raises ``ssl.SSLError`` if the TLS connection cannot take it.
        """
        self.tls.write(data)


class _Buffer:
    """Plain TCP's stand-in for a memory BIO: bytes in, bytes out, and end of stream."""

    __slots__ = ("_chunks", "eof")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.eof = False

    def write(self, data: bytes) -> None:
        self._chunks.append(data)

    def write_eof(self) -> None:
        self.eof = True

    @property
    def pending(self) -> int:
        return sum(map(len, self._chunks))

    def read(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        return data


class PlainChannel(_SocketChannel):
    """Plain TCP with :class:`TlsChannel`'s interface: for ``plain://`` upstreams
    (forwarding rules), so one connection class serves both."""

    incoming: _Buffer
    outgoing: _Buffer

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.unsent = b""  # bytes the socket did not take yet
        self.incoming = _Buffer()
        self.outgoing = _Buffer()
        self._quickack = False

    def decrypt(self) -> tuple[bytes, bool, BaseException | None]:
        """What was received since the last call (nothing to decrypt: the name keeps
        one interface), and whether the stream has ended."""
        return self.incoming.read(), self.incoming.eof, None

    def write(self, data: bytes) -> None:
        self.outgoing.write(data)
