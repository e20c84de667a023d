"""Pooled DNS over TLS (RFC 7858) on the loop's readiness callbacks.

:class:`DotConnection` joins the sans-IO core
(:class:`~dns2dot.protocol.upstream_stream.UpstreamStream`: IDs, the in-flight map,
matching, the outbox) to a :class:`~dns2dot.transport.channel.Channel`: bytes read
go into the core, its events go to the pool, its outgoing bytes go to the channel.
:class:`TlsDotConnection` opens a TLS channel; ``PlainDotConnection``
(dns2dot/upstream/plain.py) a plain one. See docs/ARCHITECTURE.md, "upstream".
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from dns2dot.protocol.errors import FramingError, UpstreamClosedError
from dns2dot.protocol.upstream_stream import UNKNOWN_ID, Unmatched, UpstreamStream
from dns2dot.transport.channel import Channel
from dns2dot.upstream.connection import CLOSING, CONNECTING, OPEN, UpstreamConnection
from dns2dot.upstream.exchange import Exchange

if TYPE_CHECKING:
    from dns2dot.upstream.pool import UpstreamServer

log = logging.getLogger("dns2dot.upstream")


class DotConnection(UpstreamConnection):
    """DNS over a stream: length-prefixed messages, matched by DNS ID and question.

    Queries sent while CONNECTING wait in the core's outbox and go out in one piece
    once OPEN; queries sent in one loop iteration are written together. Every answer
    is handed on from the readiness callback that read it: one ``recv`` takes all the
    socket holds (see :class:`~dns2dot.transport.channel.TlsChannel`).
    """

    def __init__(self, server: UpstreamServer) -> None:
        self._core: UpstreamStream[Exchange] = UpstreamStream()
        self._channel: Channel | None = None  # set on entering OPEN
        self._flush_scheduled = False
        self._first_answer = True
        super().__init__(server)
        self._pending = self._core.in_flight  # the base's bookkeeping sees the core's map

    async def _open(self) -> Channel:
        """A connected, verified channel to the upstream."""
        raise NotImplementedError

    def send(self, exchange: Exchange) -> None:
        now = self._loop.time()
        uid = self._core.send(exchange, now)
        exchange.legs.append((self, uid))
        self.queries += 1
        self.last_active = now
        if self.state is OPEN and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def idle_since(self, now: float) -> float:
        channel = self._channel
        if self._core.has_outgoing or (channel is not None and channel.unsent):
            return 0.0
        return super().idle_since(now)

    def close(self) -> None:
        self._end(None)

    def _drop_queued(self) -> None:
        self._core.discard_outgoing()

    async def _run(self) -> None:
        channel = await self._open_or_abandon(self._open)
        if channel is None:
            return
        channel.acknowledge_at_once()  # shared by many clients: see TlsChannel
        self._channel = channel
        self._enter(OPEN)
        self._loop.add_reader(channel.sock.fileno(), self._readable)
        self._flush()
        self._decrypt()  # records that came with the end of the handshake

    def _end(self, error: BaseException | None) -> None:
        """Stop using the connection (the one way it ends once opened): it takes no
        more queries now, and hands back what is pending on the next loop turn."""
        if self.state is CONNECTING:
            self._task.cancel()
        elif self.state is OPEN:
            self._enter(CLOSING)
            self._loop.call_soon(self._shut, error)

    def _shut(self, error: BaseException | None) -> None:
        channel = self._channel
        assert channel is not None and self.state is CLOSING
        fd = channel.sock.fileno()
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        channel.close()
        if isinstance(error, ssl.SSLError | OSError):
            log.debug("%s: connection ended: %s", self.server, error)
        self._abandon(UpstreamClosedError("upstream closed the connection"), sent=True)

    def _flush(self) -> None:
        self._flush_scheduled = False
        channel = self._channel
        if self.state is not OPEN or channel is None:
            return
        data = self._core.data_to_send()
        if not data:
            return
        try:
            channel.write(data)  # into memory: never blocks
        except ssl.SSLError as exc:
            self._end(exc)
            return
        self._send_ciphertext()

    def _send_ciphertext(self) -> None:
        """Send what the channel holds; the rest waits for the socket to be writable
        (bounded: at most MAX_INFLIGHT_PER_CONNECTION queries are ever waiting)."""
        channel = self._channel
        if self.state is not OPEN or channel is None:
            return
        waited = bool(channel.unsent)
        try:
            done = channel.transmit()
        except OSError as exc:
            self._end(exc)
            return
        if done and waited:
            self._loop.remove_writer(channel.sock.fileno())
        elif not done and not waited:
            self._loop.add_writer(channel.sock.fileno(), self._send_ciphertext)

    def _readable(self) -> None:
        channel = self._channel
        if self.state is not OPEN or channel is None:
            return
        try:
            channel.receive()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(exc)
            return
        self._decrypt()

    def _decrypt(self) -> None:
        channel = self._channel
        if self.state is not OPEN or channel is None:
            return
        data, ended, error = channel.decrypt()
        if channel.pending_output:  # OpenSSL has something to say (a key update)
            self._send_ciphertext()
        if data:
            try:
                ok = self._received(data)
            except Exception as exc:
                self._log_failure(exc)
                ok = False
            if self._first_answer:
                self._first_answer = False
                self.server.remember_session(channel)
            if not ok:
                ended = True
        if ended:
            self._end(error)

    def _received(self, data: bytes) -> bool:
        """Hand on the answers in ``data``; False once the stream is broken."""
        for event in self._core.data_received(data):
            if isinstance(event, tuple):  # Answered
                uid, exchange, sent_at, answer = event
                self._answered(uid, exchange, sent_at, answer)
            elif isinstance(event, Unmatched):
                if event.reason == UNKNOWN_ID:
                    log.debug("%s: answer for unknown ID %d ignored", self.server, event.uid)
                else:
                    log.warning("%s: %s; ignored", self.server, event.reason)
            else:
                if isinstance(event.error, FramingError):
                    log.warning("%s: bad framing from upstream, reconnecting", self.server)
                else:
                    log.warning("%s: malformed answer (%s), reconnecting", self.server, event.error)
                return False
        return True


class TlsDotConnection(DotConnection):
    """DNS over TLS on a :class:`~dns2dot.transport.channel.TlsChannel`."""

    async def _open(self) -> Channel:
        return await self.server.open_channel()
