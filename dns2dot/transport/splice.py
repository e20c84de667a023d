"""Byte-for-byte splicing of a client socket onto a TLS connection: pipe mode.

``--mode pipe`` copies bytes and nothing else, so :class:`Splice` is driven straight
by the loop's readiness callbacks: a readable socket is read, and what was read is
written to the other socket at once (docs/ARCHITECTURE.md, "pipe mode").

Back-pressure without buffers: while one socket has not taken all the bytes it was
given, the socket they came from is not read, so a splice never holds more than one
read per direction, however slowly its client or upstream reads.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from enum import Enum

from dns2dot.protocol.client_stream import FrameScanner
from dns2dot.transport.channel import MAX_BATCH, TlsChannel
from dns2dot.transport.sockets import reset_on_close

# After the client's end of stream, how long the upstream may stay quiet before the
# splice ends: socat's ``-t`` default. Answers to the last queries are still relayed.
HALF_CLOSE_LINGER = 0.5


class SpliceState(Enum):
    """Where a splice is; changed only by ``Splice._to``."""

    OPEN = "open"  # both ways
    CLIENT_ENDED = "client_ended"  # the client half-closed: relay the upstream until quiet
    UPSTREAM_ENDED = "upstream_ended"  # the upstream ended: the client takes the rest, then end
    CLOSED = "closed"


# The members as module globals: reading them through the enum class costs a
# microsecond on Python 3.11, on the path of every read.
_OPEN, _CLIENT_ENDED, _UPSTREAM_ENDED, _CLOSED = SpliceState


class Splice:
    """Copies bytes both ways between ``client`` (plain) and ``upstream`` (TLS).

    :meth:`run` returns once either side ends (end of stream, an error, or
    :meth:`close`); both sockets are then closed. The client's end of stream may be a
    half-close (``shutdown(SHUT_WR)`` after its last query), so the splice then goes on
    relaying the upstream's bytes, as socat does, until the upstream has been quiet for
    ``linger`` seconds; the upstream is not told (a TLS close_notify could make it drop
    answers it still owes). ``activity`` counts the reads, for an idle check that costs
    the hot path nothing but an addition; :meth:`stalled` says how long the client has
    left the upstream's bytes untaken. ``on_upstream_data`` is called once, after
    the first bytes from the upstream (by then TLS 1.3 has delivered its session
    tickets, which the caller may keep for resumption). With ``dns_framing`` the
    client's bytes are followed as DNS frames (RFC 1035 §4.2.2,
    :class:`~dns2dot.protocol.client_stream.FrameScanner`): at a length prefix too
    short for a header, or once frames that cannot be queries keep coming, what came
    before goes on and the client is then treated as having ended its input.
    """

    def __init__(
        self,
        client: socket.socket,
        upstream: TlsChannel,
        on_upstream_data: Callable[[], None] | None = None,
        linger: float = HALF_CLOSE_LINGER,
        dns_framing: bool = False,
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
        self._blocked_since = 0.0  # when the client last took any of _to_client
        self.state = _OPEN
        self._framing = FrameScanner() if dns_framing else None
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

    def _to(self, state: SpliceState) -> None:
        """The one place the state changes; entering a state does its part."""
        old = self.state
        if old is _CLOSED or state is old:
            return
        self.state = state
        loop = self._loop
        if state is _CLIENT_ENDED or state is _UPSTREAM_ENDED:
            # Nothing more is read from the client: it ended, or nothing can take it.
            loop.remove_reader(self._client_fd)
        elif state is _CLOSED:
            loop.remove_reader(self._client_fd)
            loop.remove_writer(self._client_fd)
            loop.remove_reader(self._upstream_fd)
            loop.remove_writer(self._upstream_fd)

    def stalled(self, now: float) -> float:
        """For how long the client has taken none of the upstream's bytes waiting for it
        (0 when none wait)."""
        return now - self._blocked_since if self._to_client else 0.0

    def close(self) -> None:
        """Stop splicing and close both sockets (idempotent); a client that left bytes
        untaken is reset."""
        if self.state is _CLOSED:
            return
        self._to(_CLOSED)
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
        bad = -1 if self._framing is None else self._framing.feed(data, self._loop.time())
        if bad >= 0:
            # A prefix too short for a DNS header (the stream cannot be followed past
            # it), or frames that keep failing: what came before goes on, then as if
            # the client had ended its input.
            data = data[:bad]
        try:
            if data:
                self._upstream.tls.write(data)  # into memory: never blocks
        except ssl.SSLError as exc:
            self._end(exc)
            return
        self._flush_upstream()
        if bad >= 0 and self.state is _OPEN:
            self._client_done()

    def _client_done(self) -> None:
        """The client's end of stream: stop reading it, and end the splice once the
        upstream has been quiet for the linger time (at once without one)."""
        if self._linger <= 0:
            self._end()
            return
        self._to(_CLIENT_ENDED)
        self._arm_linger()

    def _arm_linger(self) -> None:
        self._linger_timer = self._loop.call_later(self._linger, self._linger_over, self.activity)

    def _linger_over(self, activity_then: int) -> None:
        self._linger_timer = None
        if self.state is _CLOSED:
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
        loop = self._loop
        try:
            done = self._upstream.transmit()
        except OSError as exc:
            # The upstream takes nothing more (it closed, perhaps on the client's
            # garbage), but what it sent before still goes to the client: stop reading
            # the client, and the upstream's end of stream (its reader is level
            # triggered) ends the splice once that is relayed.
            if self.error is None:
                self.error = exc
            loop.remove_writer(self._upstream_fd)
            loop.remove_reader(self._client_fd)
            return
        if done and waited:
            loop.remove_writer(self._upstream_fd)
            if self.state is _OPEN:
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
            # A reset: the records that came before it still go to the client.
            if self.error is None:
                self.error = exc
            self._upstream.incoming.write_eof()
        self._decrypt()

    def _decrypt(self) -> None:
        """Hand the client what OpenSSL can decrypt from what the upstream sent."""
        data, ended, error = self._upstream.decrypt()
        if self._upstream.outgoing.pending:  # OpenSSL has something to say (a key update)
            self._flush_upstream()
        if ended:
            self._to(_UPSTREAM_ENDED)
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
        if self.state is _CLOSED:
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
            if self.state is _UPSTREAM_ENDED:
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
                self._blocked_since = loop.time()
            elif sent:
                self._blocked_since = loop.time()  # progress: a slow reader, not a stalled one
            self._to_client = data[sent:]

    def _client_writable(self) -> None:
        if self._to_client:
            self._send_client(self._to_client)
