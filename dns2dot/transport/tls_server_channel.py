"""The server side of a TLS connection through memory BIOs, as a client-session transport.

:class:`TlsServerTransport` offers what
:class:`~dns2dot.transport.sockets.SocketTransport` offers (``recv``, ``send``,
``want_read``, ``want_write``, ``close``, ``reset``), with TLS in between, so a pool
session serves a DoT client exactly as it serves a TCP client: the same framing, the
same in-flight cap, the same rules for garbage senders and non-readers. Like
:class:`~dns2dot.transport.channel.TlsChannel`, OpenSSL never touches the socket: one
``recv`` takes every record the socket holds, and what OpenSSL encrypts goes out in one
``send``. The handshake runs on the loop's readiness callbacks, bounded by a deadline
(a silent client, garbage instead of a ClientHello, a ClientHello trickled byte by
byte). A client's close_notify or end of stream ends its input only, as a TCP
half-close does, so the answers to the queries it sent are still written.
See docs/ARCHITECTURE.md, "transport".
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from enum import Enum

from dns2dot.transport.channel import MAX_BATCH, RECORD, decrypt_all
from dns2dot.transport.sockets import reset_on_close


class TlsState(Enum):
    """Where a server TLS connection is; changed only by ``TlsServerTransport._to``."""

    HANDSHAKING = "handshaking"
    OPEN = "open"
    CLOSED = "closed"


HANDSHAKING, OPEN, CLOSED = TlsState


def _nothing() -> None:
    """The callback of a transport that no session has attached to yet."""


def _ignore(why: str) -> None:
    """The failure callback once it has been called (or before any handshake)."""


class TlsServerTransport:
    """One client's TLS connection on a connected non-blocking socket.

    Call :meth:`handshake` first; once ``on_done`` is called, :meth:`attach` the
    session's readiness callbacks and use it as a ``SocketTransport``.
    """

    def __init__(
        self, sock: socket.socket, context: ssl.SSLContext, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.sock = sock
        self._fd = sock.fileno()
        self._loop = loop
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.state = HANDSHAKING
        self._unsent = b""  # ciphertext the socket did not take yet
        self.sent = 0  # octets of ciphertext the socket took, for a stall check
        self._held = 0  # plaintext bytes passed to send whose ciphertext is still unsent
        self._ended = False  # the client's input ended (close_notify or end of stream)
        self._broken: BaseException | None = None  # a broken record after some plaintext
        self._on_readable: Callable[[], None] = _nothing
        self._on_writable: Callable[[], None] = _nothing
        self._reading = False  # the loop's interest, mirrored: add/remove only on change
        self._writing = False
        self._session_writing = False  # what the session asked of want_write
        self._kick: asyncio.Handle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._on_done: Callable[[], None] = _nothing
        self._on_failed: Callable[[str], None] = _ignore

    def _to(self, state: TlsState) -> None:
        if self.state is not CLOSED:
            self.state = state

    @property
    def closed(self) -> bool:
        return self.state is CLOSED

    # -- the handshake -----------------------------------------------------------------

    def handshake(
        self, timeout: float, on_done: Callable[[], None], on_failed: Callable[[str], None]
    ) -> None:
        """Run the handshake on readiness callbacks; ``on_done`` once it is complete,
        ``on_failed(why)`` (the connection closed) if it fails or is not done within
        ``timeout`` seconds."""
        self._on_done = on_done
        self._on_failed = on_failed
        self._deadline = self._loop.call_later(timeout, self._fail, "handshake timeout")
        self._watch_read(True)

    def _shake(self) -> None:
        """Readable (or writable with handshake bytes unsent) during the handshake."""
        try:
            data = self.sock.recv(RECORD)
        except (BlockingIOError, InterruptedError):
            data = None
        except OSError as exc:
            self._fail(str(exc))
            return
        if data == b"":
            self._fail("closed during the handshake")
            return
        if data:
            self.incoming.write(data)
        try:
            self.tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        except (ssl.SSLError, OSError) as exc:
            self._flush_quietly()  # the alert, if the socket takes it
            self._fail(str(exc))
            return
        try:
            flushed = self._flush()
        except OSError as exc:
            self._fail(str(exc))
            return
        if not done:
            self._watch_write(not flushed)
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._watch_read(False)
        self._to(OPEN)
        self._watch_write(self._owed)  # the handshake's last flight, if the socket was full
        on_done, self._on_done = self._on_done, _nothing
        on_done()

    def _fail(self, why: str) -> None:
        if self.state is not HANDSHAKING:
            return
        self.close(notify=False)
        on_failed, self._on_failed = self._on_failed, _ignore
        on_failed(why)

    # -- the session's interface (SocketTransport's) ------------------------------------

    def attach(self, on_readable: Callable[[], None], on_writable: Callable[[], None]) -> None:
        """The session's readiness callbacks, once the handshake is done."""
        self._on_readable = on_readable
        self._on_writable = on_writable

    def recv(self, size: int) -> bytes:
        """The plaintext the client sent (all OpenSSL can decrypt now: a partial read
        would leave plaintext no readiness callback announces); ``b""`` once its input
        ended (close_notify, or end of stream even without close_notify).

        Raises ``BlockingIOError`` when no plaintext is there yet, ``OSError`` on a
        broken connection or record.
        """
        if self._broken is not None:
            raise ConnectionResetError(str(self._broken))
        if self._ended:
            return b""
        try:
            data: bytes | None = self.sock.recv(MAX_BATCH)
        except (BlockingIOError, InterruptedError):
            if not (self.incoming.pending or self.tls.pending()):
                raise
            data = None  # records that came with the handshake's last flight
        if data:
            self.incoming.write(data)
        plain, ended, error = decrypt_all(self.tls, self.incoming)
        if data == b"":
            # End of stream without close_notify: the input ends here. Not told to
            # OpenSSL, which would count it a truncation attack and refuse to write
            # the answers still owed.
            ended = True
        if self.outgoing.pending:  # what reading made OpenSSL say (a key update answered)
            self._flush_quietly()
            self._watch_write(self._session_writing or self._owed)
        if error is not None and not isinstance(error, ssl.SSLEOFError):
            if not plain:
                raise ConnectionResetError(str(error))
            self._broken = error
        elif ended:
            self._ended = True
        if not plain:
            if ended:
                return b""
            raise BlockingIOError
        if self._ended or self._broken is not None:
            self._kick_soon()  # the socket may never be readable again to say so
        return plain

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt and write; how many bytes of ``data`` are in the kernel now.

        Bytes whose ciphertext the socket did not take are not counted as taken, so
        the session sees a client that does not read as it would over plain TCP: call
        again with the same bytes first. Raises ``OSError`` on a broken connection.
        """
        taken = 0
        if self._held:
            if not self._flush():
                return 0
            taken, self._held = self._held, 0
        rest = memoryview(data)[taken:]
        if rest:
            try:
                self.tls.write(rest)
            except ssl.SSLError as exc:
                raise ConnectionResetError(str(exc)) from None
            if self._flush():
                taken += len(rest)
            else:
                self._held = len(rest)
        return taken

    def write_records(self, records: list[bytes]) -> None:
        """Encrypt each of ``records`` into TLS records of its own (a client may read
        one message per record) and send them all in one ``send``. What the socket
        does not take waits in :attr:`backlog` and goes out when it is writable.
        Not mixed with :meth:`send` on one connection. Raises ``OSError`` on a broken
        connection."""
        write = self.tls.write
        try:
            for record in records:
                write(record)
        except ssl.SSLError as exc:
            raise ConnectionResetError(str(exc)) from None
        self._flush()
        self._watch_write(self._session_writing or self._owed)

    @property
    def backlog(self) -> int:
        """Octets of ciphertext the socket has not taken yet."""
        return len(self._unsent) + self.outgoing.pending

    def want_read(self, on: bool) -> None:
        self._watch_read(on)
        if on and self.state is OPEN and (self.incoming.pending or self.tls.pending()):
            self._kick_soon()  # plaintext that came with the handshake's last flight

    def want_write(self, on: bool) -> None:
        self._session_writing = on
        self._watch_write(on or self._owed)

    def close(self, notify: bool = True) -> None:
        """Stop watching and close (idempotent), with a close_notify if ``notify`` and
        the socket takes it."""
        if self.state is CLOSED:
            return
        if notify and self.state is OPEN:
            # SSLWantReadError: the peer's close_notify is not awaited.
            with contextlib.suppress(ssl.SSLError, OSError):
                self.tls.unwrap()
            self._flush_quietly()
        self._watch_read(False)
        self._watch_write(False)
        for handle in (self._kick, self._deadline):
            if handle is not None:
                handle.cancel()
        self._kick = self._deadline = None
        self._to(CLOSED)
        self.sock.close()

    def reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), dropping what the kernel holds unsent."""
        if self.state is not CLOSED:
            reset_on_close(self.sock)
        self.close(notify=False)

    # -- internals ---------------------------------------------------------------------

    def _flush(self) -> bool:
        """Send what OpenSSL encrypted; whether nothing is left unsent. Raises what
        ``send`` raises, but for a full socket."""
        data = self._unsent + self.outgoing.read() if self._unsent else self.outgoing.read()
        if not data:
            return True
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        self.sent += sent
        self._unsent = data[sent:]
        return not self._unsent

    def _flush_quietly(self) -> None:
        with contextlib.suppress(OSError):  # the next send or read reports it
            self._flush()

    def _readable(self) -> None:
        if self.state is HANDSHAKING:
            self._shake()
        else:
            self._on_readable()

    @property
    def _owed(self) -> bool:
        """Ciphertext no ``send`` of the session waits for (the handshake's last flight,
        what reading made OpenSSL say) is still unsent."""
        return bool(self._unsent) and not self._held

    def _writable(self) -> None:
        if self.state is HANDSHAKING:
            self._shake()
            return
        if self._owed:
            try:
                self._flush()
            except OSError:
                self._unsent = b""  # broken: the session's next recv or send says so
            if not self._session_writing:
                self._watch_write(self._owed)
                return
        self._on_writable()

    def _watch_read(self, on: bool) -> None:
        if on is not self._reading and self.state is not CLOSED:
            self._reading = on
            if on:
                self._loop.add_reader(self._fd, self._readable)
            else:
                self._loop.remove_reader(self._fd)

    def _watch_write(self, on: bool) -> None:
        if on is not self._writing and self.state is not CLOSED:
            self._writing = on
            if on:
                self._loop.add_writer(self._fd, self._writable)
            else:
                self._loop.remove_writer(self._fd)

    def _kick_soon(self) -> None:
        if self._kick is None:
            self._kick = self._loop.call_soon(self._kicked)

    def _kicked(self) -> None:
        self._kick = None
        if self._reading and self.state is OPEN:
            self._on_readable()
